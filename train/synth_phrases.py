"""What the synthetic callers say: the target inside whole sentences, confusables inside
whole sentences, and the pool of ordinary sentences.

A sentence is synthesised as one utterance, so the target is heard with the
coarticulation, reduction and prosody of the words around it; `kws_train.align` then finds
its bounds. Texts are drawn from a seeded generator and never from the filler pool, which
holds no form of «слыш» / «слуш».
"""
from __future__ import annotations

import numpy as np

REAL_MARK = "[real "  # a real recording among a call's texts: "[real frog_desc_ru.ogg]"

TARGETS = ("не слышу", "не слышно")

# Words before and after the target. {t} is the target; a few frames carry their own
# punctuation so the engines vary the prosody (question, pause, exclamation).
# Words that go with either target, and words that only go with one of them
# («я не слышу», «мне не слышно»), so every sentence is grammatical.
_BEFORE_ANY = ("", "", "", "алло,", "алло, алло,", "совсем", "вообще", "опять", "почему-то", "теперь",
               "простите,", "извините, но", "связь плохая,", "вы пропадаете,", "алло, вы где?", "подождите,",
               "девушка,", "мужчина,", "ой,", "слушайте,", "да что такое,", "плохо, почти", "что-то")
_BEFORE = {"не слышу": ("я", "я вас", "я вас совсем", "я ничего", "говорите громче, я", "говорите громче, я вас",
                        "алло, говорите громче, я вас", "простите, я вас", "а я вас", "я вообще",
                        "повторите, я", "я вас плохо, то есть", "я вас опять", "я тебя", "ничего"),
           "не слышно": ("мне", "вас", "мне ничего", "вообще ничего", "тут ничего", "здесь", "у меня",
                         "вас совсем", "ничего", "вас плохо,", "вас опять", "тебя", "отсюда")}
_AFTER_ANY = ("", "", "", ", перезвоните, пожалуйста", ", что вы говорите?", ", говорите громче",
              ", повторите, пожалуйста", ", алло", ". Перезвоните", ", что вы сказали?", "из-за шума",
              ", повторите ещё раз", ", вы пропадаете", ", связь ужасная", ". Давайте я перезвоню", "совсем",
              "ничего", ", ничего не понимаю")
_AFTER = {"не слышу": ("вас", "вас совсем", "тебя", "ни слова", "вас, перезвоните", "вас, алло", "ничего"),
          "не слышно": ("вас", "ничего", "вас совсем", "совсем ничего", "ни слова", "тебя", "вообще")}
_ENDS = (".", ".", ".", "!", "?", "...")

# Cores of sentences that sound near the target but are not it: forms of «слыш-»,
# «слуш-», «услыш-», «не» followed by a near-rhyme, and questions about hearing.
CONFUSABLE_CORES = ("слышу вас отлично", "я вас слышу", "я вас хорошо слышу", "вы меня слышите",
                    "вы меня слышите?", "теперь слышно", "теперь слышно хорошо", "всё слышно", "хорошо слышно",
                    "плохо слышно", "слышно хорошо", "слышно нормально", "не слушай его", "не слушайте их",
                    "я не слышал об этом", "я не слышала об этом", "не услышал", "не услышала", "он не слышит",
                    "они не слышат", "вы не слышали?", "не слыхал", "слышишь?", "услышимся", "послушайте",
                    "слушаю вас", "алло, слушаю вас", "я вас слушаю", "не слушается", "не вижу", "не вижу вас",
                    "не спешу", "не смешно", "не дышу", "не пишу", "не скажу", "не знаю", "не сплю", "не лишнее",
                    "не слишком", "не страшно", "не спеша", "не слыша", "не слышный", "не слушаю", "не шучу",
                    "не слышали", "я услышал", "не сложно", "не скучно", "не спорю", "мне слышно", "мне не видно",
                    "не понятно", "не нужно", "не душно", "мне не смешно")
_CONF_BEFORE = ("", "", "алло,", "да,", "я", "ну", "а", "теперь", "вот", "хорошо,", "да-да,", "ага,", "ладно,",
                "мне кажется,", "вообще", "честно говоря,", "алло, да,", "так,", "ну что,")
_CONF_AFTER = ("", "", "", "спасибо", "говорите", "продолжайте", "всё нормально", "вас", "теперь", "пожалуйста",
               "я понял", "давайте дальше", "это точно", "правда", "совсем", "ладно", "так что")


def _join(*words: str) -> str:
    return " ".join(w for w in words if w)


def _finish(rng: np.random.Generator, text: str) -> str:
    end = _ENDS[rng.integers(len(_ENDS))]
    text = text.rstrip(",")
    return text if text[-1] in ".?!" else text + end


def target_sentence(rng: np.random.Generator) -> tuple[str, str]:
    """(sentence, target) with the target inside: words before, after, or both."""
    target = TARGETS[rng.integers(len(TARGETS))]
    befores, afters = _BEFORE_ANY + _BEFORE[target], _AFTER_ANY + _AFTER[target]
    before, after = befores[rng.integers(len(befores))], afters[rng.integers(len(afters))]
    if not before and not after:  # the sentence form always has company
        after = _AFTER[target][rng.integers(len(_AFTER[target]))]
    text = _finish(rng, _join(before, target, after).replace(" ,", ",").replace(" .", "."))
    return text[0].upper() + text[1:], target


def confusable_sentence(rng: np.random.Generator) -> str:
    core = CONFUSABLE_CORES[rng.integers(len(CONFUSABLE_CORES))]
    after = "" if core.endswith("?") else _CONF_AFTER[rng.integers(len(_CONF_AFTER))]
    text = _join(_CONF_BEFORE[rng.integers(len(_CONF_BEFORE))], core + ("," if after else ""), after)
    text = _finish(rng, text)
    return text[0].upper() + text[1:]


def has_target(text: str) -> bool:
    """Whether a text holds a target phrase as words (used to keep negatives clean)."""
    words = text.lower().replace("ё", "е")
    for p in ".,!?;:—-":
        words = words.replace(p, " ")
    padded = f" {' '.join(words.split())} "
    return any(f" {t} " in padded for t in TARGETS)
