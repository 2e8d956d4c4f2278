"""Deterministic reading of a reply: the answer it gives, where the text leaves no doubt. Pure, no model.

The first step of the answer instrument (:mod:`pbt_ray.dialogue.extraction`). It returns a
:class:`Reading` when the reply is unambiguous and ``None`` (abstain) otherwise; abstentions go to the
extractor model, constrained to :func:`answer_spans` (the reply's own spans) or the choice labels.

- Multiple choice: the choices a reply names, by label ("(B)", "b", "option B", "the second option") or
  by text ("refrigerator"), each with its stance: named as the answer ("the answer is", "... is right"),
  or named as what the answer is *not* ("not (A)", "you said (C)", "(D) is wrong", a choice inside a
  question). One choice named as the answer, or one named without a negative stance, is the reading; a
  list of three or more choices without a pick, or a reply naming no choice, gives no answer.
- Free-form: explicit answer clauses first ("the answer is X", "I'd say X", "... goes to X", "not X but
  Y"), a number for "how many / what year" questions, then sentence by sentence: an answer opening the
  reply ("Paris, without a doubt."), "<the question restated> is X", "it's X", "X, not Y", "X <the
  question's verb>", "... by X". X is cut at the first clause boundary ("Paris, a city of ..." -> "Paris")
  and focused (:func:`_focus`); descriptions ("the biggest city") and remarks ("a great question") are
  never answers.
- No answer named: agreement only ("you're right") is Agree, rejection only ("that's wrong") is Disagree,
  refusals, echoed instructions or questions, chat-template debris and undecided hedges are NONE.

Readings of different replies never depend on each other; every rule here has a unit test
(tests/unit/test_reading.py) and the whole instrument is measured by ``pbt bench extract``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pbt_ray.answers import normalize_answer

AGREE, DISAGREE, NONE_TOKEN = "Agree", "Disagree", "NONE"


@dataclass(frozen=True)
class Reading:
    """What a reply says: ``outcome`` answer | agree | disagree | none; ``answer`` is the answer's text as
    the reply words it (multiple choice: the choice label); ``method`` says which step read it."""

    outcome: str
    answer: str | None = None
    method: str = "rule"


# ---- cues ------------------------------------------------------------------------------------

_NEG_BEFORE = re.compile(
    r"(?:\bnot|n't|\bnever|\bno longer|\brather than|\binstead of|\bother than|\bexcept|\bunlike|\bisn't|\bwasn't"
    r"|\byou(?:'ve| have)? (?:said|say|chose|choose|picked|pick|suggest(?:ed)?|think|thought|claim(?:ed)?|went with|mention(?:ed)?)"
    r"|\byour (?:answer|choice|pick|suggestion)(?: of)?|\bthe other agent(?:'s)?(?: answer)?(?: of)?"
    r"|\b(?:many|some|most) (?:people )?(?:say|think|believe|would say|might say|assume|guess)"
    r"|\bpeople (?:often )?(?:say|think|believe|assume)|\bmight think|\bmay think|\bcould think|\bmistake\w* for"
    r"|\bconfuse\w*(?: it)? with|\bi (?:first|originally|initially) (?:thought|said|chose|picked)|\bnot (?:be|the)"
    r"|\b(?:might|would|could|may) argue for|\bgo for|\bnobody|\bno one|\bnothing|\bneither|\bnor)"
    r"[^.;!?]{0,24}$",
    re.I,
)
_NEG_AFTER = re.compile(
    r"^[\s\"')\]]*(?:,\s*)?(?:is|was|would be|seems|sounds)?\s*(?:just\s+|simply\s+|clearly\s+)?(?:not\b|wrong|incorrect|unlikely|a mistake|a common mistake"
    r"|silly|absurd|ridiculous|nonsense|impossible|out\b|ruled out|no good|useless|pointless"
    r"|doesn't|does not|isn't|can't|cannot|makes no sense|is a myth|are wrong)",
    re.I,
)
_POS_BEFORE = re.compile(
    r"(?:\banswer\s*(?:is|was|would be|must be|should be|remains|:)|\bi (?:choose|chose|pick|picked|select|go with|'ll go with"
    r"|will go with|would go with|stick with|stand by|say|'d say|would say|believe it'?s|think it'?s)|\bgo with|\bit(?:'s| is| must be"
    r"| would be| should be)|\bdefinitely|\bclearly|\bcorrect (?:choice|option|one) is|\bbest (?:choice|option|answer) is"
    r"|\bmost likely|\bwould most likely|\bmy (?:answer|choice|pick)(?: is|:)?|\bso|\bthat(?:'s| is)|\bobviously|\bsurely|\bcertainly)"
    r"(?:\s+(?:the|a|an|with|for|on|in))?\s*[:\-]?\s*$",
    re.I,
)
_AGREE = re.compile(
    r"\b(?:you(?:'re| are) (?:right|correct|absolutely right)|i agree|agreed|i accept|you(?:'ve| have) convinced me"
    r"|i stand corrected|you make a (?:good|fair|great|valid) point|good point|fair point|that makes sense"
    r"|i(?:'ll| will) go with your|i(?:'ll| will) (?:go along|change my answer)|(?<!think )your answer is (?:right|correct)"
    r"|i was wrong|i see your point|i'm convinced|i am convinced|i concede|exactly what you said|on board with"
    r"|you got it|same as you|as you said|defer to you|well said|count me in|(?:that|this)(?:'s| is) (?:correct|right)(?!\s+\w)|you(?:'re| are) correct"
    r"|(?<!n't think )(?<!not think )your (?:letter|choice|pick|option) is (?:the )?(?:right|correct)|(?<!n't )(?<!not )\b(?:totally |completely |fully |absolutely )agree\b|the other agent(?:'s answer)? is (?:right|correct)|their answer is (?:right|correct)|you(?:'ve| have) changed my mind|i(?:'ll| will) take your)",
    re.I,
)
_DISAGREE = re.compile(
    r"\b(?:you(?:'re| are) (?:wrong|mistaken|incorrect)|i disagree|i don'?t agree|i do not agree|(?:that|this|your answer|it)(?:'s| is)"
    r" (?:not (?:right|correct|true)|wrong|incorrect|a mistake)|i don'?t think (?:so|that'?s|that is|you)|not correct"
    r"|i stand by|i(?:'ll| will)? stick (?:with|to) my|i maintain|i'?m sticking|i am sticking|i hold my|my answer stays"
    r"|i'?m not convinced|i am not convinced|i can'?t accept|i cannot accept|i won'?t change|i will not change"
    r"|i keep my|(?:i'?m|i am) keeping my|hold my ground|that can'?t be right|that cannot be right|\bdisagree\b|doesn'?t convince me|does not convince me"
    r"|not convincing|unconvinc|not changing my (?:mind|answer)|still think my|(?:my|mine) (?:original |own |first )?"
    r"(?:answer|response)? ?(?:is still|still holds|holds|stands|is right)|stick with my|yours (?:doesn'?t|does not|is not|isn'?t)"
    r"|(?:don'?t|do not) think (?:your|that|this|option|choice|the other)|not persuaded|won'?t budge|i(?:'m| am) not moving"
    r"|the other agent (?:is|has (?:this|it|that)(?: one)?) (?:wrong|mistaken)|other agent is mistaken|is simply wrong|can'?t be (?:right|correct)"
    r"|not buying|\bnope\b|no way|come on\b|the choice you made|(?:your|their|the other agent'?s?) (?:answer|choice|pick) (?:is|was) (?:simply |just )?wrong)",
    re.I,
)
_REFUSAL = re.compile(
    r"\b(?:i (?:can'?t|cannot|am unable to|'m unable to|won'?t) (?:answer|help|say|tell|determine|know)|i (?:\w+ )?don'?t know"
    r"|i do not know|as an ai|i'?m not sure|i am not sure|hard to say|impossible to (?:say|know|tell)|no way to know"
    r"|could be (?:any|many)|i have no idea)",
    re.I,
)
_ECHO = re.compile(
    r"(?:answer(?:ing)? (?:in|with) one or two sentences|trivia question together|with more than one word"
    r"|stay on this question|do not ask new questions|answer with the letter|give your best answer"
    r"|make clear how confident|hold your ground|is much more knowledgeable than you|go along with its answer"
    r"|win it over with|give it a heartfelt reason|by establishing your credibility|explain why you know this subject"
    r"|explain step by step why your answer holds|the other agent is wrong and your answer is right"
    r"|your answer is right and the other agent)",
    re.I,
)

# ---- multiple choice ---------------------------------------------------------------------------

_LABEL_PATTERNS = [
    re.compile(r"\(([A-Za-z])\)"),  # (B), (b)
    re.compile(r"(?<![A-Za-z0-9(])([A-Z])\)"),  # B)
    re.compile(r"(?i:\b(?:option|choice|letter|answer)\s*(?:is\s*(?:really\s*|definitely\s*|clearly\s*|actually\s*|obviously\s*|surely\s*)?"
               r"|would be\s*|:\s*|=\s*|#\s*)?)\(?([A-Za-z])\b(?![''’]\w)(?!\s+[a-z]+\s+(?:is|was)\b)"),
    re.compile(r"(?:^|(?<=[.!?;]\s))([A-Z])(?:[.:]|\s*[-–—]\s|\s+(?=(?:is|was|would be|seems|sounds)\b))"),  # "B. bed", "B - bed", "A is right"
    re.compile(r"^\W*([A-Za-z])\W*$"),  # the bare label
    re.compile(r"(?i:\b(?:choose|chose|pick|picked|select|go with|say|is|it's|it’s|that's|be|definitely|clearly|obviously|surely"
               r"|certainly|probably|so))\s+\(?([A-Z])\)?(?=\s*(?:[.,;:!)]|$|\s(?:because|since|as|as it|-|–|—|and)\b|\s[-–—]))"),
]
_ORDINALS = {"first": 0, "second": 1, "third": 2, "fourth": 3, "fifth": 4, "last": -1}
_ORDINAL = re.compile(r"\b(?:the\s+)?(first|second|third|fourth|fifth|last)\s+(?:option|choice|one|answer)\b", re.I)
_POS_AFTER = re.compile(r"^[\s\"')\]]*(?:,\s*)?(?:is|was|would be|seems|must be)\s+(?:the\s+)?(?:right|correct|best|answer|only (?:real |sensible |"
                        r"logical )?(?:option|answer|choice|one)|one)\b", re.I)


@dataclass(frozen=True)
class _Mention:
    label: str
    start: int
    end: int
    negative: bool
    positive: bool
    by_label: bool = False


def _stance(text: str, start: int, end: int) -> tuple[bool, bool]:
    before = text[max(0, start - 60):start].rstrip("(\"'“‘ ")
    clause = re.split(r"(?:[.;!?]\s|\bbut\b|\bhowever\b|\bactually\b|\binstead\b)", before, flags=re.I)[-1]
    after = text[end:end + 40]
    sentence_end = re.search(r"[.!?]", text[end:])
    asked = sentence_end is not None and sentence_end.group(0) == "?"  # "A sink or an oven? No: ..." asserts neither
    negative = bool(_NEG_BEFORE.search(clause) or _NEG_AFTER.match(after) or asked)
    positive = bool(_POS_BEFORE.search(clause) or _POS_AFTER.match(after)) and not negative
    return negative, positive


def _choice_pattern(text: str) -> re.Pattern | None:
    words = normalize_answer(text).split()
    if not words:
        return None
    glue = r"[\W_]+(?:(?:a|an|the)[\W_]+)?"
    return re.compile(r"(?<![\w])" + glue.join(re.escape(w) for w in words) + r"s?(?![\w])", re.I)


def choice_mentions(reply: str, choices: dict[str, str]) -> list[_Mention]:
    """Every place the reply names a choice (by label or text), with its stance, in reading order."""
    labels = {label.upper(): label for label in choices}
    found: list[tuple[str, int, int]] = []
    for pattern in _LABEL_PATTERNS:
        for match in pattern.finditer(reply):
            letter = match.group(1).upper()
            if letter in labels:
                found.append((labels[letter], match.start(1), match.end(1)))
    for match in _ORDINAL.finditer(reply):  # "the second option"
        order = list(choices)
        index = _ORDINALS[match.group(1).lower()]
        if -len(order) <= index < len(order):
            found.append((order[index], match.start(), match.end()))
    by_label = {(label, start) for label, start, _ in found}
    spans: list[tuple[str, int, int]] = []
    for label, text in choices.items():
        pattern = _choice_pattern(text)
        if pattern is not None:
            spans += [(label, m.start(), m.end()) for m in pattern.finditer(reply)]
    # a choice text inside a longer choice's text ("bed" in "go to bed") is that longer choice
    spans = [s for s in spans if not any(o is not s and o[1] <= s[1] and s[2] <= o[2] and o[2] - o[1] > s[2] - s[1]
                                          for o in spans)]
    # "(B) refrigerator": the text right after its own label is the same mention
    found += [s for s in spans if not any(f[0] == s[0] and 0 < s[1] - f[2] <= 3 for f in found)]
    mentions = []
    for label, start, end in sorted(set(found), key=lambda f: f[1]):
        # the stance of "(B) refrigerator" is read around the whole mention
        stretch_end = end
        text_pattern = _choice_pattern(choices[label])
        if text_pattern is not None:
            follow = text_pattern.match(reply, end + 1) or text_pattern.match(reply, end + 2)
            if follow is not None and follow.start() - end <= 2:
                stretch_end = follow.end()
        negative, positive = _stance(reply, start, stretch_end)
        mentions.append(_Mention(label, start, stretch_end, negative, positive, (label, start) in by_label))
    return mentions


def _lists_choices(reply: str, mentions: list[_Mention], choices: dict[str, str]) -> bool:
    """A copy of the choice list: three or more choices named by label, or all but one named at all."""
    listed = [m for m in mentions if not m.negative]  # choices named only to be rejected are not a list
    return len({m.label for m in listed if m.by_label}) >= 3 or len({m.label for m in listed}) >= max(3, len(choices) - 1)


def choice_candidates(reply: str, choices: dict[str, str]) -> list[str]:
    """The labels a reply names without a negative stance (all labels if it names none): what the constrained
    model may pick from."""
    named = [m.label for m in choice_mentions(reply, choices) if not m.negative]
    return list(dict.fromkeys(named)) or list(choices)


def read_choice(reply: str, choices: dict[str, str]) -> Reading | None:
    mentions = choice_mentions(reply, choices)
    positive = {m.label for m in mentions if m.positive}
    neutral = {m.label for m in mentions if not m.negative}
    if len(positive) == 1:
        return Reading("answer", next(iter(positive)))
    if positive:
        last = max((m for m in mentions if m.positive), key=lambda m: m.start)
        return Reading("answer", last.label)  # "I first said (A); now my answer is (C)": the latest pick
    if mentions and _lists_choices(reply, mentions, choices):
        return Reading("none")  # a list of the choices picks none of them
    if len(neutral) == 1:
        return Reading("answer", next(iter(neutral)))
    if mentions and not neutral:
        return _no_answer(reply, negated=True, final=True)
    if not mentions:  # names no choice: it gives none of its own, whatever a model would guess
        return _no_answer(reply, final=True)
    if _REFUSAL.search(reply) or re.search(r"\bor\b", reply) and re.search(r"\b(?:could|might|may|either)\b", reply, re.I):
        return Reading("none")  # undecided between the choices it names
    labelled = {m.label for m in mentions if not m.negative and m.by_label}
    if len(labelled) == 1:
        return Reading("answer", next(iter(labelled)))  # the one choice given with its label, as asked
    return None  # several choices named as candidates: the model decides among them


# ---- free-form -------------------------------------------------------------------------------

_BOUNDARY = re.compile(
    r"(?:[,;:!?()\[\]\"“”]|\.(?:\s|$)|\s[-–—]\s|\s(?:because|since|as|which|who|whose|where|when|while|but|so|and i|and it|and that"
    r"|and this|and its|due to|according|based on|thanks to|in my|if|though|although|unless|not|rather|instead|than|that is"
    r"|with (?:its|a|an|the|his|her|their)|known|located|famous|considered|making|being|having|also|too|for sure|for certain"
    r"|without a doubt|i(?:'m| am)|i think|i believe|i know|you|we|for (?:the|a|its|his|her|their|this|that) )"
    r"|\s(?:in|on|at|from|around|about|during|of|by|is|was|are|were|has|had|did|does)\s(?=\d|the year|about|around|roughly|approximately)"
    r"|\s(?:is|was|are|were|has|have|had|did|does|will|would|can|could|stepped|came|took|won|made|became|wrote|invented)\b"
    r"|\s(?:yes|no|yeah|ever|even|ever since|for)\s|\s(?:at|in|from|near|during|after|before)\s(?=(?-i:[A-Z])))",
    re.I,
)
_LEAD = re.compile(
    r"^(?:(?:well|so|yes|no|okay|ok|oh|hmm|actually|honestly|clearly|surely|certainly|definitely|of course|indeed|in fact"
    r"|i (?:think|believe|know|guess|would say|'d say|am sure|'m sure|am confident|'m confident|am certain|'m certain|feel)"
    r"(?: that)?|it(?:'s| is| was| must be| would be| should be)|that(?:'s| is| would be)|the answer(?: is|:)|answer:|my answer(?: is|:)"
    r"|final answer:?|simply|just|probably|maybe|perhaps|obviously|undoubtedly|without a doubt|for sure"
    r"|i agree(?: with you)?(?: that)?|you(?:'re| are) (?:right|correct)(?: that)?|i(?:'m| am) (?:sure|certain|confident)(?: that)?"
    r"|i can (?:assure|tell) you(?: that)?|trust me|believe me|please believe me|i(?:'d| would) say|i still think(?: that)?)[\s,:]+)+",
    re.I,
)
_VAGUE = {
    "true", "correct", "right", "wrong", "clear", "possible", "likely", "unlikely", "important", "obvious", "known",
    "well known", "true that", "not", "my answer", "answer", "this", "that", "it", "one", "so", "a fact", "fact",
    "sure", "certain", "confident", "definitely", "no", "yes", "agree", "disagree", "none", "hard", "difficult",
    "important to note", "because", "me", "you", "question", "interesting", "great", "good", "widely known",
    "a common misconception", "common misconception", "simple", "easy", "clear that", "generally", "indeed",
    "incorrect", "accurate", "inaccurate", "unknown", "unclear", "complicated", "complex", "tricky",
}
_EXPLICIT = [
    re.compile(r"\b(?:the\s+)?(?:final|correct|right|true|real|actual|only|best)?\s*answer\s*(?:here\s+|to\s+(?:this|the|that|your|my|our)\s+"
               r"(?:trivia\s+)?question\s*)?(?:is|was|would be|must be|should be|remains|:)\s+(?!not\b|never\b)(?P<x>.+)", re.I),
    re.compile(r"\bmy (?:final )?(?:answer|guess|choice|pick|vote)\s*(?:is|remains|stays|:)\s+(?!not\b)(?P<x>.+)", re.I),
    re.compile(r"\b(?:goes|went|belongs|belonged|is awarded|was awarded|is credited|was credited|is given|was given)\s+to\s+(?P<x>.+)", re.I),
    re.compile(r"\b(?:was|were|is|are)\s+won\s+by\s+(?P<x>.+)", re.I),
    re.compile(r"\bnothing\s+(?:\w+\s+){0,3}?(?:beats|tops|comes close to|is harder than|is bigger than)\s+(?P<x>.+)", re.I),
    re.compile(r"\b(?:you(?:'d| would)|we(?:'d| would)?) (?:say|call it)\s+(?P<x>.+)", re.I),
    re.compile(r"\b(?:is|are) called\s+(?P<x>.+)", re.I),
    re.compile(r"\bi(?:'ll| will| would|'d)? (?:go with|choose|pick|stick with|stay with|stand by|vote for|settle on|say)\s+"
               r"(?!your\b|my\b|that\b|it\b|what\b|mine\b|this\b|the same\b|so\b|yes\b|no\b)(?P<x>.+)", re.I),
]
_CORRECTION = [
    re.compile(r"\bnot\s+(?:the\s+)?[^,;.]{1,40}?,?\s+but\s+(?:rather\s+)?(?:it(?:'s| is| was)\s+)?(?P<x>.+)", re.I),
    re.compile(r"\bbut\s+(?:in fact\s+|actually\s+|really\s+)?(?:it(?:'s| is| was)|the (?:real |correct |true )?answer is|in reality it(?:'s| is))\s+(?!not\b)(?P<x>.+)", re.I),
    re.compile(r"\b(?:wrong|mistaken|incorrect|not right|not correct)[;:,.!]?\s*(?:-\s*)?(?:it(?:'s| is| was)|the answer is)\s+(?!not\b)(?P<x>.+)", re.I),
]
_IT_IS = re.compile(
    r"(?:^|[.;:!?,]\s*(?:and\s+|so\s+|but\s+)?|\b(?:think|believe|sure|confident|certain|know|say|right|agree|yes|no)\s*(?:that\s+)?[,:]?\s*)"
    r"(?:it|that|the answer)(?:'s|’s| is| was| must be| would be| should be| has to be| might be| may be| could be)"
    r"\s+(?!not\b|never\b)(?P<x>.+)",
    re.I,
)
_STOP = {"a", "an", "the", "of", "in", "on", "at", "to", "for", "by", "is", "was", "are", "were", "do", "does", "did",
         "what", "which", "who", "whom", "whose", "where", "when", "how", "why", "many", "much", "and", "or", "with",
         "from", "that", "this", "these", "those", "it", "its", "be", "been", "has", "have", "had", "as", "into"}
_WH = re.compile(r"^\s*(?:who|what|which|where|when|how many|how much|how|in which|in what|on which|at which)\b", re.I)


def _trim(candidate: str) -> str | None:
    """The answer phrase at the start of ``candidate``: up to the first clause boundary, at most 6 words."""
    text = candidate.strip().lstrip("\"'“‘*_ ")
    text = _LEAD.sub("", text).lstrip("\"'“‘*_ ")
    cut = _BOUNDARY.search(text)
    if cut is not None:
        text = text[:cut.start()]
    text = text.strip(" \t\"'“”‘’*_.-–—")
    if not text:
        return None
    words = text.split()
    if len(words) > 6:
        return None
    if re.match(r"\w+ed\s+(?:into|by|in|to|with|from|as|at|for|on|off|out|up|down)\b", text, re.I):
        return None  # "turned into sugar": a predicate, not an answer
    norm = normalize_answer(text)
    if not norm or norm in _VAGUE or all(w in _STOP for w in norm.split()):
        return None
    if _DESCRIPTION.match(norm) or _META.search(norm) or _ECHO.search(text):
        return None  # "the biggest and most ...", "a great question": a description or a remark, not an answer
    return text


# Words of remarks about the discussion itself ("a great question", "an excellent example of why", "about a
# story"): a phrase with one of them is not an answer.
_META = re.compile(
    r"(?:^|\s)(?:question|questions|answer|answers|example|story|topic|puzzle|riddle|challenge|point|idea|argument"
    r"|response|appeal|reasoning|logic|explanation|mistake|opinion|discussion|conversation|agent|reply|matter|problem"
    r"|incorrect|inaccurate|accurate|correct|right|wrong|true|false|sure|certain|ready|happy|glad|sorry|help|assist"
    r"|about|like|why|how|what|which|whether|because|classic|choice|option|options|subject)(?:\s|$)|(?:^|\s)one$|^(?:for|from|with|in|on|at|to|of|as|by|into|over|under)\s",
)


_DESCRIPTION = re.compile(r"^(?:(?:very|much|far|even|so|too|quite|really|most|more|less|least|best|worst|only|same|first|last)\b"
                          r"|(?:bigg|larg|small|high|low|long|short|old|young|great|fast|slow|tall|deep|hott|cold|near|clos|strong|heavi"
                          r"|earli|lat|rich|poor|wid|bright|dark|warm|cool|new|bes|wors|easi|hard|dens|light)est\b|not\b|never\b|no\b|one of\b|part of\b|\w+ly\b)")


def _question_words(question: str) -> set[str]:
    return {w for w in normalize_answer(question).split() if w not in _STOP}


def _not_question(candidate: str, question: str) -> bool:
    """A candidate made only of the question's own words restates the question; it answers nothing."""
    words = [w for w in normalize_answer(candidate).split() if w not in _STOP]
    return bool(words) and not set(words) <= _question_words(question)


def _sentences(reply: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", reply.strip()) if s]


def _restated_forward(sentence: str, question: str) -> str | None:
    """"<the question restated> is/was X" -> X: the strongest clue after an explicit answer clause."""
    return _restated(sentence, question, forward_only=True)


def _restated(sentence: str, question: str, forward_only: bool = False) -> str | None:
    """"<question restated> is/was/are X" -> X; "X <question verb phrase>" -> X; "... by X" for "who" questions."""
    qwords = _question_words(question)
    if not qwords:
        return None
    copulas = list(re.finditer(r"\b(?:is|was|are|were|has been|have been|had been|equals|remains|became|lies)\s+(?!not\b|never\b)",
                               sentence, re.I))
    for match in copulas:  # "the capital of Egypt is Cairo": the answer follows the restated question
        head_clause = re.split(r"[,;:]|\b(?:so|and|but|because|since|while|whereas)\b", sentence[:match.start()], flags=re.I)[-1]
        head = {w for w in normalize_answer(head_clause).split() if w not in _STOP}
        tail = sentence[match.end():]
        tail_words = [w for w in normalize_answer(_trim_clause(tail)).split() if w not in _STOP]
        if tail_words and sum(w in qwords for w in tail_words) * 2 >= len(tail_words):
            continue  # "... is home to wild kangaroos": the tail restates the question
        if head & qwords:
            found = _trim(re.sub(r"^(?:\w+ed|written|built|drawn|made|sung|won|given|known|seen|taken)\s+by\s+", "", tail, flags=re.I))
            if found and _not_question(found, question):
                return found
    if forward_only:
        return None
    for match in copulas:
        head_text, tail = sentence[:match.start()], sentence[match.end():]
        tail_words = {w for w in normalize_answer(_trim_clause(tail)).split() if w not in _STOP}
        if tail_words & qwords:  # "Rome is the capital of Italy": the answer is the subject
            subject = _subject(head_text)
            if subject and _not_question(subject, question):
                return subject
    did = re.search(r"(?:^|[,;:]\s*|\bthat\s+)(?P<x>[^,;:]{1,40}?)\s+(?:did|does|is|was|has|had)\s*(?:[.,;!]|$)", sentence, re.I)
    if did:
        subject = _subject(did.group("x"))
        if subject and _not_question(subject, question):
            return subject
    wh = _WH.match(question)
    if wh and wh.group(0).strip().lower() == "where":
        place = re.search(r"\b(?:in|at|on|near)\s+(?P<x>(?:the\s+)?[A-Z][\w'-]*(?:\s+[A-Z][\w'-]*)*)", sentence)
        if place and _not_question(place.group("x"), question):
            return place.group("x")
    if wh and wh.group(0).strip().lower() == "who":
        by = re.search(r"\b(?:\w+ed|written|built|drawn|made|sung|won|held|run|led|founded|shown|known|begun)\s+"
                       r"(?:\w+\s+){0,3}?by\s+(?P<x>.+)", sentence, re.I)
        if by:
            found = _trim(by.group("x"))
            if found and _not_question(found, question):
                return found
    if wh:
        rest = question[wh.end():].strip(" ?")
        verb = next((w for w in rest.split() if normalize_answer(w) and normalize_answer(w) not in _STOP), None)
        if verb:
            at = re.search(r"\b" + re.escape(verb) + r"\b", sentence, re.I)
            if at and at.start() > 0:
                subject = _LEAD.sub("", sentence[:at.start()].strip())
                subject = re.split(r"[,;:]\s*", subject)[-1]
                found = _trim(subject) if subject and len(subject.split()) <= 5 else None
                if found and _not_question(found, question):
                    return found
    return None


def _trim_clause(text: str) -> str:
    cut = re.search(r"[,;:!?]|\.(?:\s|$)", text)
    return text[:cut.start()] if cut else text


def _subject(head: str) -> str | None:
    """The answer as a sentence's subject: the last clause before the verb, without lead-ins, at most 5 words."""
    subject = re.split(r"[,;:]\s*|\bthat\s+", _LEAD.sub("", head.strip()))[-1].strip()
    subject = _LEAD.sub("", subject)
    if not subject or len(subject.split()) > 5 or re.match(
            r"(?:i|you|we|they|it|he|she|this|that|there|my|your|whereas|while|although|though|and|but|so|because)\b", subject, re.I):
        return None
    return _trim(subject)


def _find(patterns, reply: str, question: str) -> str | None:
    for pattern in patterns:
        for match in pattern.finditer(reply):
            start = match.start("x")
            window = reply[max(0, start - 30):start]
            negated = _NEG_BEFORE.search(window) and not re.search(r"\bbut\b[^.]*$", window, re.I)
            if negated and not re.search(r"\bnothing\b", reply[match.start():start], re.I):  # "nothing beats X" asserts X
                continue
            found = _trim(match.group("x"))
            if found and re.search(r"\bor\b", found, re.I):
                continue  # "it could be X or Y": undecided
            if found and _not_question(found, question) and not _NEG_AFTER.match(reply[match.start("x") + len(found):]):
                return found
    return None


_NUMERIC_Q = re.compile(
    r"\b(?:how (?:many|much|long|far|fast|old|tall|high|deep|big|heavy|hot|cold)|(?:in |during )?(?:what|which) year|when\b"
    r"|(?:at )?what (?:temperature|speed|age|percentage|number|distance|height|depth|date))"
    r"|\b(?:what|which) is the (?:speed|temperature|number|population|boiling point|freezing point|melting point|height|length|age)",
    re.I,
)
_NUMBER_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
                 "seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred thousand "
                 "million billion dozen").split()
_TENS = "twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety"
_NUMBER = re.compile(r"(?<![\w.,])(?<!this )(?<!that )(?<!which )(?<!each )(?<!every )(?<!the )(?<!any )(?<!no )"
                     r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+(?:\.\d+)?|(?:" + _TENS + r")-(?:one|two|three|four|five|six|seven|eight|nine)"
                     r"|(?:" + "|".join(_NUMBER_WORDS) + r"))(?![\w-])", re.I)


def _numeric(text: str, question: str) -> str | None:
    """For "how many / what year / when ..." questions: the first number the reply gives as its own (a year
    first where the question asks for one), skipping numbers named as what the answer is not."""
    if not _NUMERIC_Q.search(question):
        return None
    wants_year = bool(re.search(r"\b(?:year|when)\b", question, re.I))
    numbers = [m for m in _NUMBER.finditer(text) if not _NEG_BEFORE.search(text[max(0, m.start() - 30):m.start()])]
    if wants_year:
        numbers = [m for m in numbers if re.fullmatch(r"\d{3,4}", m.group(0))] or numbers
    return numbers[0].group(0).rstrip(",") if numbers else None


_NOT_LEADING = re.compile(
    r"(?:i|you|we|they|it|he|she|this|that|there|my|your|our|as|if|when|well|yes|no|nope|hmm+|oh|ok|okay|so|please|actually"
    r"|honestly|sure|great|good|interesting|what|who|why|how|where|which|let's|let|whatever|because|since|although|though"
    r"|while|in|on|at|for|with|from|to|by|of|and|but|or|not|i'm|i'd|i've|it's|that's|thanks|thank|hello|hi|wow|indeed"
    r"|absolutely|exactly|certainly|definitely|of course|right|correct|wrong|true|false|agreed|disagree|sorry|alas|hey"
    r"|despite|unlike|according|after|before|during|given|considering|regarding|alright|fine|nope|yeah|yep|great|nice"
    r"|wait|look|listen|first|second|finally|then|also|however|besides|instead)\b",
    re.I,
)
_VERB = re.compile(r"\b(?:is|was|are|were|be|been|has|have|had|do|does|did|can|will|would|should|could|might|may|must"
                   r"|think|believe|know|say|said|agree|disagree)\b|n't\b", re.I)


_IRREGULAR_VERBS = {"wrote", "won", "built", "sang", "drew", "ran", "found", "made", "led", "began", "came", "became",
                    "took", "gave", "flew", "swam", "fought", "sold", "told", "held", "lost", "beat", "bought", "brought",
                    "taught", "thought", "left", "met", "paid", "said", "saw", "sent", "stood", "wore", "broke", "chose"}


def _leading(text: str, question: str) -> str | None:
    """"Paris, without a doubt.", "Carbon dioxide: plants ...", "The heart. The lungs ...": an answer that
    opens the reply as a phrase of its own (no verb), before the first clause boundary."""
    match = re.match(r"(?P<x>[^,.;:!?()\[\]\"“”]{1,60}?)\s*(?:[,;:!]|\.(?:\s|$)|[-–—]\s|$)", text)
    if not match:
        return None
    x = match.group("x").strip()
    if re.match(r"\s*:\s*(?:i|i'm|we|my|you)\b", text[match.end("x"):], re.I):
        return None  # "SmolLM: I'm ready ...": a speaker tag, not an answer
    words = x.split()
    qwords = _question_words(question)
    for i, word in enumerate(words[1:], 1):  # "Michelangelo painted it": the question's verb ends the answer
        w = normalize_answer(word)
        if w in qwords and (w.endswith("ed") or w in _IRREGULAR_VERBS):
            x = " ".join(words[:i])
            break
    if (len(x.split()) > 4 or _NOT_LEADING.match(x) or _VERB.search(x) or re.search(r"\bor\b", x, re.I)
            or re.search(r"\b(?:point|question|idea|argument|thought|guess|answer|choice)s?\b", x, re.I)):
        return None
    found = _trim(x)
    return found if found and _not_question(found, question) else None


def read_free(reply: str, question: str) -> Reading | None:
    text = " ".join(reply.split())
    if _TORN.search(text):
        return Reading("none")
    for patterns in (_EXPLICIT, _CORRECTION):
        found = _find(patterns, text, question)
        if found:
            number = _numeric(found, question)  # "the answer is a hexagon with 6 sides" -> 6
            return Reading("answer", number or found)
    found = _numeric(text, question)
    if found:
        return Reading("answer", found)
    for index, sentence in enumerate(_sentences(text)):  # the first sentence that gives an answer gives it
        rules = [lambda s: _restated_forward(s, question), lambda s: _find([_IT_IS], s, question),
                 lambda s: _rather_than(s, question), lambda s: _restated(s, question)]
        if index == 0:
            rules.insert(0, lambda s: _leading(text, question))
        for rule in rules:
            found = rule(sentence)
            if found:
                return Reading("answer", _focus(found, question))
    bare = _bare(text, question)
    if bare:
        return Reading("answer", _focus(bare, question))
    return _no_answer(text)


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def _focus(candidate: str, question: str) -> str:
    """The answer inside a clause the reader found: question words and function words at its start dropped
    ("Brazilians speak Portuguese" -> "Portuguese" for "What language do Brazilians speak?"), and a proper
    name after a description kept alone ("the Scottish scientist Alexander Fleming" -> "Alexander Fleming")."""
    stems = {_stem(w) for w in _question_words(question)}
    words = candidate.split()
    while len(words) > 1 and (normalize_answer(words[0]) in _STOP or _stem(normalize_answer(words[0])) in stems):
        words = words[1:]
    tail = []
    for i in range(len(words) - 1, -1, -1):
        word = words[i]
        particle = word.lower() in _NAME_PARTICLES and i > 0 and words[i - 1][:1].isupper() and bool(tail)
        if not (word[:1].isupper() or particle):
            break
        tail.insert(0, word)
    lower = [w for w in words[: len(words) - len(tail)] if normalize_answer(w) not in _STOP]
    if tail and any(w[:1].islower() for w in lower):
        words = tail
    return " ".join(words).strip(" ,.;:") or candidate


_NAME_PARTICLES = {"van", "von", "da", "de", "del", "della", "di", "du", "la", "le", "al", "bin", "ibn", "der", "den", "ten", "y"}


def _rather_than(text: str, question: str) -> str | None:
    """"The UK uses the pound sterling, not the euro": the clause before ", not <other>" holds the answer."""
    match = re.search(r"(?:^|[.;!?]\s+)(?P<x>[^.;!?,]{2,80}?),\s+(?:and\s+)?not\s+(?:the\s+|a\s+|an\s+)?\w", text)
    if not match:
        return None
    clause = _LEAD.sub("", match.group("x").strip())
    if not clause or _NOT_LEADING.match(clause):
        return None
    if _VERB.search(clause) is not None and not re.search(r"\b(?:is|was|are|were)\b", clause):
        return None
    focused = _focus(clause, question)
    determiner = re.search(r"^.*\s(?:the|a|an|its|their|his|her)\s+(?P<np>\S.*)$", focused, re.I)
    if determiner:  # "uses the Canadian dollar" -> "Canadian dollar": the object, after its determiner
        focused = determiner.group("np")
    found = _trim(focused) if len(focused.split()) <= 4 else None
    return found if found and _not_question(found, question) else None


def _bare(text: str, question: str) -> str | None:
    """A short reply that is only an answer: "Homer.", "It's Mars!", "1066"."""
    stripped = _LEAD.sub("", text.strip()).strip(" .!\"'")
    if not stripped or len(stripped.split()) > 4 or re.search(r"[.;!?]\s", stripped):
        return None
    if _AGREE.search(text) or _DISAGREE.search(text) or _REFUSAL.search(text) or _ECHO.search(text):
        return None
    found = _trim(stripped)
    return found if found and _not_question(found, question) else None


def _no_answer(reply: str, negated: bool = False, final: bool = False) -> Reading | None:
    """A reply that names no answer: Agree, Disagree, NONE, or ``None`` when it is not clear which
    (``final``: NONE then, e.g. a multiple-choice reply that names no choice cannot give one)."""
    if _ECHO.search(reply):
        return Reading("none")  # the prompt's own instructions read back: no stance of the speaker's
    agree, disagree = bool(_AGREE.search(reply)), bool(_DISAGREE.search(reply))
    if agree and not disagree:
        return Reading("agree")
    if disagree and not agree:
        return Reading("disagree")
    if agree and disagree:
        return None
    if (negated or _REFUSAL.search(reply) or _ECHO.search(reply) or _FILLER.search(reply) or _junk(reply)
            or _NEGATED_ANSWER.search(reply) or _UNDECIDED.search(reply)):
        return Reading("none")
    return Reading("none") if final else None


# "it's not X" / "definitely not X": only what the answer is not
_NEGATED_ANSWER = re.compile(r"\b(?:it|that|this|answer)(?:'s|’s| is| was)(?:\s+\w+ly)?\s+not\b|\b(?:definitely|certainly|surely) not\b", re.I)
_TORN = re.compile(r"\beither\b[^.]*\bor\b|\bcan'?t decide\b|\bcannot decide\b|\bcan'?t (?:say|tell) which\b|\btorn between\b"
                   r"|\bcan'?t (?:pick|choose)\b|\bcannot (?:pick|choose)\b", re.I)
_UNDECIDED = re.compile(r"\b(?:could|might|may) be\b[^.]*\bor\b|\bcan'?t decide\b|\beither\b[^.]*\bor\b|\bnot sure\b", re.I)


_SPECIAL = re.compile(r"<\|[^|>]*\|>|</?s>|\[/?INST\]|\b(?:user|assistant|system)\s*:", re.I)
_FILLER = re.compile(r"\b(?:ready to help|happy to help|how can i (?:help|assist)|let me know if|i hope this helps)", re.I)


def _junk(reply: str) -> bool:
    return (not any(ch.isalnum() for ch in reply)
            or bool(re.search(r"https?://|www\.|click here|subscribe|buy now|lorem ipsum|asdf", reply, re.I)))


def _echoes_question(text: str, question: str) -> bool:
    """The reply only repeats the question ("Question: What is the capital of Argentina?")."""
    words = set(normalize_answer(text).split()) - {"question", "q"}
    return bool(words) and words <= set(normalize_answer(question).split())


def read_reply(question: str, reply: str, choices: dict[str, str] | None = None) -> Reading | None:
    """The deterministic reading of ``reply``, or ``None`` where only a model can decide."""
    text = " ".join((reply or "").split())
    if not text:
        return Reading("none", method="empty")
    text = " ".join(_SPECIAL.sub(" ", text).split())  # chat-template debris is not part of any answer
    text = re.sub(r"^(?:(?:user|assistant|system)\b\s*|\[[^\]]{0,30}\]\s*:?\s*)+", "", text, flags=re.I).strip()
    if not text or _junk(text) or _echoes_question(text, question):
        return Reading("none")
    if choices:
        return read_choice(text, choices)
    return read_free(text, question)


# ---- candidates for the constrained model ------------------------------------------------------

_SPAN_SPLIT = re.compile(r"[,;:!?()\[\]\"“”]|\.(?:\s|$)|\s[-–—]\s")


def answer_spans(question: str, reply: str, limit: int = 48) -> list[str]:
    """The reply's own candidate answers, for a structured-output choice: its phrases of 1-4 words that are
    not only question words or function words, longest first within each clause, deduplicated."""
    spans: list[str] = []
    seen: set[str] = set()
    for clause in _SPAN_SPLIT.split(" ".join(reply.split())):
        words = clause.split()
        for size in (4, 3, 2, 1):
            for i in range(len(words) - size + 1):
                chunk = words[i:i + size]
                norm = normalize_answer(" ".join(chunk))
                if (not norm or norm in seen or norm in _VAGUE or normalize_answer(chunk[0]) in _STOP
                        or normalize_answer(chunk[-1]) in _STOP or not _not_question(" ".join(chunk), question)):
                    continue
                seen.add(norm)
                spans.append(" ".join(chunk).strip(" .'\"*"))
    return [s for s in spans if s][:limit]
