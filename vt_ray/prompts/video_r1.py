"""Video-R1's prompt, so a Video-R1 user gets the same prompts (``prompt.style: video_r1 | video_r1_eval``).

Source: tulerfeng/Video-R1@59d65c3, ``src/r1-v/src/open_r1/grpo.py`` ``make_conversation_image_and_video``
(QUESTION_TEMPLATE, TYPE_TEMPLATE; sft_video.py has the same text) and ``src/eval_bench.py`` (its
QUESTION_TEMPLATE says "between the <think> and </think> tags" where training says "<think> </think>").
The user turn is ``[{"type": data_type}, {"type": "text", "text": QUESTION_TEMPLATE.format(Question=q) +
TYPE_TEMPLATE[problem_type]}]`` with no system turn (grpo.py and eval_bench.py send none; sft_video.py sends
"You are a helpful assistant"). For multiple choice, ``q = problem + "Options:\\n" + "".join(o + "\\n" for o in
options)`` with the lettered options ("A. ...") exactly as in the file (no space before "Options:").
"""

from __future__ import annotations

_THINKING = (
    "{Question}\n"
    "Please think about this question as if you were a human pondering deeply. "
    "Engage in an internal dialogue using expressions such as 'let me think', 'wait', 'Hmm', 'oh, I see', "
    "'let's break it down', etc, or other natural language thought expressions "
    "It's encouraged to include self-reflection or verification in the reasoning process. "
)
QUESTION_TEMPLATE = _THINKING + (
    "Provide your detailed reasoning between the <think> </think> tags, and then give your final answer "
    "between the <answer> </answer> tags."
)
"""grpo.py / sft_video.py (training)."""
EVAL_QUESTION_TEMPLATE = _THINKING + (
    "Provide your detailed reasoning between the <think> and </think> tags, and then give your final answer "
    "between the <answer> and </answer> tags."
)
"""eval_bench.py (evaluation)."""

TYPE_TEMPLATE = {
    "multiple choice": " Please provide only the single option letter (e.g., A, B, C, D, etc.) within the "
    "<answer> </answer> tags.",
    "numerical": " Please provide the numerical value (e.g., 42 or 3.14) within the <answer> </answer> tags.",
    "OCR": " Please transcribe text from the image/video clearly and provide your text answer within the "
    "<answer> </answer> tags.",
    "free-form": " Please provide your text answer within the <answer> </answer> tags.",
    "regression": " Please provide the numerical value (e.g., 42 or 3.14) within the <answer> </answer> tags.",
}


def question_text(problem: str, problem_type: str, options: list[str]) -> str:
    """Video-R1's question: the problem, plus "Options:" and one lettered option per line for multiple choice."""
    if problem_type == "multiple choice":
        return problem + "Options:\n" + "".join(op + "\n" for op in options)
    return problem


def user_text(problem: str, problem_type: str, options: list[str], evaluation: bool = False) -> str:
    template = EVAL_QUESTION_TEMPLATE if evaluation else QUESTION_TEMPLATE
    return template.format(Question=question_text(problem, problem_type, options)) + TYPE_TEMPLATE[problem_type]
