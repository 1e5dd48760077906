"""Demo data from packages: emoji scenes for training FLAME and CLIP on a CPU in minutes.

Glyphs come from the Noto Color Emoji font and their names (in 14 languages) from the ``emoji``
package; ``build_demo_data`` writes training scenes with raw, short and long captions and four
held-out evaluation sets with their suite file.
"""

from .build import SCALES, build_demo_data
from .glyphs import LANGUAGES, EmojiFontNotFound, Glyph, find_emoji_font, list_glyphs, vocabulary
from .scenes import Scene, captions, render_scene, sample_hard_negative_group, sample_scene

__all__ = ["SCALES", "build_demo_data", "LANGUAGES", "EmojiFontNotFound", "Glyph", "find_emoji_font", "list_glyphs",
           "vocabulary", "Scene", "captions", "render_scene", "sample_hard_negative_group", "sample_scene"]
