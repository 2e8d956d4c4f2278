"""`recipe: advisor` (issue 19): a small advisor that persuades a frozen receiver (Bai et al., arXiv 2405.18718;
RECIPES.md section 2). So far its pure logic: episodes, answer checking per task, mining."""
