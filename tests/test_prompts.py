"""Prompt sets: the reference sets verbatim, user files, caption clean-up."""

import json

import pytest

from flameclip.text.prompts import PromptSet, clean_caption, load_prompt_set

# Typed from the FLAME reference prompt sets (spaces exactly as the reference tokenises them).
LONG_PREFIX = 'Detailed Image description : "{caption}" . After thinking step by step ,'
SHORT_PREFIX = 'Image description : "{caption}" . After thinking step by step ,'
FACETS = [
    'this image description means in just one word:"',
    'the category of the main object in this image means in just one word:"',
    'the prominent characteristic or pattern of the main object in this image means in just one word:"',
    'the category of the minor object in this image means in just one word:"',
    'the prominent characteristic or pattern of the minor object in this image means in just one word:"',
    'the primary action or event taking place in this image means in just one word:"',
    'the overall atmosphere or emotion of this image means in just one word:"',
]


# long3 (not a reference set) is long7 cut to its first three prompts: the reference's text, fewer facets.
@pytest.mark.parametrize("name,prefix,k", [("single", SHORT_PREFIX, 1), ("short3", SHORT_PREFIX, 3),
                                           ("long3", LONG_PREFIX, 3), ("long7", LONG_PREFIX, 7)])
def test_builtin_sets_are_the_reference_verbatim(name, prefix, k):
    ps = load_prompt_set(name)
    assert ps.k == k and ps.prefix == prefix
    assert list(ps.prompts) == [" " + f for f in FACETS[:k]]
    # Rendering gives exactly the reference text with one space at the seam.
    assert ps.render("A dog.")[0] == prefix.replace("{caption}", "A dog.") + " " + FACETS[0]


def test_user_prompt_file(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"name": "mine", "prefix": 'Photo: "{caption}" ,', "prompts": [" in one word:\""]}))
    ps = load_prompt_set(str(path))
    assert ps.k == 1 and ps.render("x.") == ['Photo: "x." , in one word:"']
    # The fingerprint follows the text that reaches the tokenizer, not the name.
    other = PromptSet(name="mine", prefix='Photo: "{caption}" ;', prompts=(' in one word:"',))
    assert ps.fingerprint() != other.fingerprint()


def test_bad_prompt_sets_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a built-in set"):
        load_prompt_set("long9")
    with pytest.raises(ValueError, match="exactly once"):
        PromptSet(name="x", prefix="no caption here", prompts=(" a",))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a valid prompt set"):
        load_prompt_set(str(bad))


def test_clean_caption_matches_the_reference_rules():
    assert clean_caption('a "big" dog') == "a 'big' dog."
    assert clean_caption("Ends well.") == "Ends well."
    assert clean_caption("  spaced\n out  ") == "spaced\n out."  # only the ends are stripped
    assert clean_caption("a table?") == "a table."  # not "a table?."
    assert clean_caption('he said "hi"') == "he said 'hi'"  # a final quote needs no full stop
    assert clean_caption("tab\tinside") == "tab\tinside."
    assert clean_caption("   ") == ""
