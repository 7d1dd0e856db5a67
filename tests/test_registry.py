"""utils/registry.py: case-insensitive lookup, the ranked "did you mean", the mapping view."""

import pytest

from utils.errors import UnknownNameError, UserError
from utils.registry import Registry, similarity, suggest


def test_lookup_is_case_insensitive_and_keeps_the_registered_spelling():
    things = Registry("augmentation")
    things.add("MoCo2", 1)
    things.register("ArcFace", "arc")(2)
    assert things.get("moco2") == things["MOCO2"] == 1 and things.get("arc") == 2
    assert things.canonical("arcface") == "ArcFace"
    assert "MoCo2" in things and "moco2" in things and 3 not in things
    assert list(things) == things.names() == ["MoCo2", "ArcFace", "arc"] and len(things) == 3


def test_an_unknown_name_lists_the_known_and_suggests_the_closest():
    heads = Registry("head")
    for name in ("arcface", "cosface", "curricularface"):
        heads.add(name, name)
    with pytest.raises(UnknownNameError, match=r"unknown head 'arcfce'; did you mean 'arcface'\? "
                                                r"\(known: arcface, cosface, curricularface\)") as err:
        heads.get("arcfce")
    assert isinstance(err.value, (UserError, ValueError))
    with pytest.raises(UnknownNameError, match=r"unknown head 'zzz' \(known:"):
        heads.get("zzz")


def test_a_name_registered_twice_is_refused():
    things = Registry("backbone")
    things.add("r50", 1)
    with pytest.raises(ValueError, match="backbone 'R50' is registered twice"):
        things.add("R50", 2)


@pytest.mark.parametrize("query, best", [
    ("lr_rate", "lr"),  # difflib alone ranks sample_rate and l_a first
    ("lr_stpes", "lr_steps"),
    ("batchsize", "batch_size"),
    ("wieght_decay", "weight_decay"),
    ("momentun", "momentum"),
])
def test_suggestions_rank_by_similarity(query, best):
    keys = ["lr", "lr_steps", "sample_rate", "l_a", "batch_size", "weight_decay", "momentum", "m", "s"]
    assert suggest(query, keys).startswith(f"; did you mean {best!r}")
    assert max(keys, key=lambda k: similarity(query, k)) == best


def test_nothing_close_suggests_nothing():
    assert suggest("optimizer", ["lr", "m", "s"]) == ""
