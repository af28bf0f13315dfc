"""Scorers for ``alignedvq eval --scorer``: each maps (prediction, accepted answers) to a score in
[0, 1] for one question; a run's accuracy is their mean.

- ``exact``: today's ShapesVQA rule (alignedvq/evaluation/answers.py): lower-case, strip, drop
  one trailing full stop, 1 if that equals any accepted answer so normalised, else 0.
- ``vqav2``: the official VQA accuracy, reproduced from GT-Vision-Lab/VQA
  ``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` (master; the same code as Cloud-CV's
  VQA-Challenge evaluation server): min(1, matches/3) averaged over the leave-one-out subsets of
  the human answers, after its normalisation (punctuation, number words, articles, contractions).
- ``vqav2-lmms``: lmms-eval's variant (``lmms_eval/tasks/vqav2/utils.py`` with
  ``EvalAIAnswerProcessor`` from ``lmms_eval/tasks/_task_utils/vqa_eval_metric.py``, itself
  taken from Facebook's pythia/mmf): the prediction is always normalised first (lower-cased,
  commas and question marks dropped, "'s" split off, then the official punctuation and
  digit/article steps), so a prediction like "Yes." scores against ten agreeing "yes" where the
  official code gives it 0.

The official code's quirks are kept on purpose (the numbers must match published ones):
- it normalises the prediction and the human answers only when the humans disagree
  (``len(set(answers)) > 1``); when all agree, the raw prediction (only white space trimmed)
  must equal their answer exactly, case included;
- ``periodStrip`` is ``(?!<=\\d)(\\.)(?!\\d)``: meant as a look-behind, the ``(?!<=\\d)`` is a
  look-ahead that never fails here, so every full stop not followed by a digit goes; and
  ``re.UNICODE`` is passed as ``sub``'s *count*, so at most 32 of them are removed;
- a punctuation mark is deleted (not replaced by a space) when it touches a space anywhere in
  the text, or when the text contains a digit-comma-digit;
- ``manualMap``, the articles and the contractions apply word by word after lower-casing, so
  the contraction keys with capitals ("Im", "Ive", "Id've") never match.
The one departure: the official leave-one-out drops every answer *object* equal to the held-out
one; VQAv2's objects carry a unique ``answer_id``, so exactly one is dropped. Answers here may be
plain strings, so the subsets are formed by position, which is the same on VQAv2."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from alignedvq.evaluation.answers import is_correct

Scorer = Callable[[str, Sequence[str]], float]

# --- the official tables (vqaEval.py) --------------------------------------------------------

CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
                "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = ("a", "an", "the")
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<",
               "@", "`", ",", "?", "!")
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic: see the module docstring
COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
# lmms-eval's comma pattern: a run of commas between digits (same verdict on real answers).
LMMS_COMMA_STRIP = re.compile(r"(?<=\d)(,)+(?=\d)")


def process_punctuation(text: str, comma_strip: re.Pattern = COMMA_STRIP) -> str:
    """vqaEval.processPunctuation: the tests look at the *input* text, the edits accumulate."""
    out = text
    joined_to_numbers = comma_strip.search(text) is not None
    for mark in PUNCTUATION:
        if mark + " " in text or " " + mark in text or joined_to_numbers:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return PERIOD_STRIP.sub("", out, re.UNICODE)  # sic: re.UNICODE (32) is the count


def process_digit_article(text: str) -> str:
    """vqaEval.processDigitArticle: lower-case, number words to digits, articles dropped,
    contractions restored, words joined by single spaces."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def _trim(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def _leave_one_out(prediction: str, answers: list[str]) -> float:
    """Mean over each held-out human answer of min(1, matches among the others / 3)."""
    if not answers:
        return 0.0
    matches = sum(a == prediction for a in answers)
    # Holding out a matching answer leaves matches - 1 among the others; any other, matches.
    total = sum(min(1.0, (matches - (a == prediction)) / 3) for a in answers)
    return total / len(answers)


def _vqa_accuracy(prediction: str, accepted: Sequence[str], comma_strip: re.Pattern) -> float:
    answers = [_trim(a) for a in accepted]
    if len(set(answers)) > 1:
        answers = [process_digit_article(process_punctuation(a, comma_strip)) for a in answers]
        prediction = process_digit_article(process_punctuation(prediction, comma_strip))
    return _leave_one_out(prediction, answers)


def vqav2_score(prediction: str, accepted: Sequence[str]) -> float:
    """The official VQA accuracy of one prediction (vqaEval.py, see the module docstring)."""
    return _vqa_accuracy(_trim(prediction), accepted, COMMA_STRIP)


def lmms_normalise(prediction: str) -> str:
    """EvalAIAnswerProcessor.__call__: what lmms-eval does to every prediction first."""
    text = prediction.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = process_punctuation(_trim(text), LMMS_COMMA_STRIP)
    return process_digit_article(text)


def vqav2_lmms_score(prediction: str, accepted: Sequence[str]) -> float:
    """lmms-eval's vqav2 ``exact_match``: the official rule on an already normalised
    prediction."""
    return _vqa_accuracy(lmms_normalise(prediction), accepted, LMMS_COMMA_STRIP)


def exact_score(prediction: str, accepted: Sequence[str]) -> float:
    return float(is_correct(prediction, list(accepted)))


SCORERS: dict[str, Scorer] = {"exact": exact_score, "vqav2": vqav2_score,
                              "vqav2-lmms": vqav2_lmms_score}


def scorer(name: str) -> Scorer:
    try:
        return SCORERS[name]
    except KeyError:
        raise ValueError(f"unknown scorer {name!r}; expected one of "
                         f"{', '.join(SCORERS)}") from None
