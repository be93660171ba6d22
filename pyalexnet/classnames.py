"""Human-readable class names: an ImageNet synset -> words file ("n01440764 tench, Tinca
tinca" per line, as LOC_synset_mapping.txt and synset_words.txt have it) or a plain list
of names, one a line."""
from __future__ import annotations

import re
from pathlib import Path

WNID = re.compile(r"^n\d{8}$")


class ClassNamesError(ValueError):
    """A class-names file that does not fit the classes."""


def read_class_names(path, classes=None, count=None) -> list:
    """The display names of ``classes`` (folder names, e.g. wnids) or, without them, of
    ``count`` classes in the file's order; a ClassNamesError names the file and problem."""
    path = Path(path)
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise ClassNamesError(f"--class-names {path}: cannot read it ({e})") from None
    lines = [ln for ln in lines if ln]
    if not lines:
        raise ClassNamesError(f"--class-names {path}: the file is empty; give one name a line "
                              "or 'wnid words' lines")
    pairs = [ln.split(None, 1) for ln in lines]
    if all(WNID.match(p[0]) for p in pairs):
        words = {p[0]: (p[1] if len(p) > 1 else p[0]) for p in pairs}
        if classes is not None and all(WNID.match(str(c)) for c in classes):
            missing = [c for c in classes if c not in words]
            if missing:
                raise ClassNamesError(f"--class-names {path}: no words for the class folder(s) "
                                      f"{', '.join(missing[:3])}")
            return [words[c] for c in classes]
        names = list(words.values())
    else:
        names = lines
    want = len(classes) if classes is not None else count
    if want is not None and len(names) != want:
        raise ClassNamesError(f"--class-names {path}: {len(names)} names for {want} classes")
    return names
