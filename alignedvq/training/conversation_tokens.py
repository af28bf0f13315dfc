"""Token ids of a whole conversation about one image, and the positions whose logits the codec's
distillation compares: every assistant turn's tokens and the token after each answer.

The text is the checkpoint's own chat template over the whole conversation
(:func:`cloud_server.language_model.conversation_messages`), so a multi-turn LLaVA conversation
trains on what the model reads at inference time. Assistant spans are found by rendering each
turn's prefix with the generation prompt (what the model sees before it answers) and the
conversation through that answer: the characters in between are the answer. A fast tokenizer's
offsets map those characters to tokens. This works for any template that renders a
conversation as a growing string, as llava-1.5's does; one that does not is refused by name.
"""

from __future__ import annotations

from dataclasses import dataclass

from cloud_server.language_model import conversation_messages


class TemplateError(ValueError):
    """The chat template does not render a conversation as a prefix of its continuation."""


@dataclass(frozen=True)
class ConversationTokens:
    ids: list[int]          # the whole conversation, image tokens expanded, special tokens added
    targets: list[int]      # positions p whose logits (predicting token p + 1) are distilled


class ConversationTokenizer:
    def __init__(self, processor, image_tokens: int):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        if not self.tokenizer.is_fast:
            raise TemplateError("codec distillation needs a fast tokenizer (its character "
                                "offsets locate the answers); this checkpoint's is slow")
        self.image_token = processor.image_token
        self.image_tokens = image_tokens

    def _render(self, messages, generation_prompt: bool) -> str:
        text = self.processor.apply_chat_template(messages,
                                                  add_generation_prompt=generation_prompt)
        # One token per image feature, as the processor expands it when given pixels.
        return text.replace(self.image_token, self.image_token * self.image_tokens)

    def answer_spans(self, turns) -> tuple[str, list[tuple[int, int]]]:
        """The whole conversation's text and each answer's character span in it."""
        messages = conversation_messages(turns)
        text = self._render(messages, generation_prompt=False)
        spans = []
        for k in range(len(turns)):
            # Messages alternate user, assistant: turn k's answer is message 2k + 1.
            before = self._render(messages[:2 * k + 1], generation_prompt=True)
            through = self._render(messages[:2 * k + 2], generation_prompt=False)
            if not (through.startswith(before) and text.startswith(through)):
                raise TemplateError("the chat template does not render turn "
                                    f"{k + 1} as a prefix of the conversation; cannot locate "
                                    "its answer")
            answer = through[len(before):]
            start = len(before) + len(answer) - len(answer.lstrip())
            spans.append((start, len(before) + len(answer.rstrip())))
        return text, spans

    def __call__(self, turns) -> ConversationTokens:
        """``turns``: (question, answer) pairs; the first question may hold ``<image>``."""
        text, spans = self.answer_spans(turns)
        encoded = self.tokenizer(text, return_offsets_mapping=True)
        targets = []
        for start, end in spans:
            inside = [i for i, (a, b) in enumerate(encoded.offset_mapping)
                      if b > a and a >= start and b <= end]
            if not inside:
                continue  # an empty answer: nothing of it to distil
            # Logits at p predict token p + 1: the answer's tokens from the position before the
            # first, and what follows the answer (the end of the turn) from its last.
            targets += list(range(inside[0] - 1, inside[-1] + 1))
        return ConversationTokens(list(encoded.input_ids), targets)
