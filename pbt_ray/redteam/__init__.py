"""The red-teaming recipe (issue 18, RECIPES.md §1): an attacker writes prompts, an oracle labels them, a judge
classifies them; both models are trained round after round. Pure logic here (records, mining, metrics); the stages
that run it on the shared Serve / Ray Data / Ray Train parts come with the recipe declaration."""
