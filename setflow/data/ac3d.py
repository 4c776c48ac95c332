"""A reader for AC3D ``.ac`` models (the text format of FlightGear's aircraft) -> triangle meshes.

Only geometry is read: the object tree, vertices, polygon surfaces and the per-object ``loc`` /
``rot`` transforms. Materials, textures, normals and creases are skipped. Parsing never executes
anything: every line is split into words and numbers and checked against what the format allows.

Format (AC3D file format notes, inivis.com; the same tokens as FlightGear's SimGear loader)::

    AC3Db                                   header: 'AC3D' + a hex version letter
    MATERIAL "name" rgb r g b  amb ...      palette lines (any number)
    OBJECT world|poly|group|light           an object; its section ends with 'kids N'
      name "..."  data N (+ N characters)  texture "..."  texrep u v  texoff u v  crease a
      subdiv n  url s  hidden  locked  folded                                (skipped)
      rot r00 r01 r02 r10 r11 r12 r20 r21 r22     3x3 rotation, row-major (default I)
      loc x y z                                   translation (default 0)
      numvert V  + V lines 'x y z'
      numsurf S  + S surfaces:  SURF flags / [mat m] / refs n + n lines 'index u v'
      kids K                                      then K child objects, recursively

Transforms are relative to the parent: a vertex ``v`` of an object with ``rot R`` and ``loc t``
under a parent ``(R_p, t_p)`` lands at ``R_p (R v + t) + t_p`` (rotation first, then the
location; the parent's transform applies after the child's, up to the root). ``R`` is the
row-major matrix of the file acting on column vectors. (SimGear's loader reads the nine numbers
into OSG's row-vector matrix, which amounts to ``R^T``; FlightGear's AI aircraft contain no
``rot`` lines, so the two readings give the same meshes for them.)

Surfaces: the low 4 bits of ``SURF`` are the type -- 0 polygon (fan-triangulated from its first
vertex), 1 closed line and 2 open line (skipped: no area), 4 triangle strip (AC3D >= 4). The high
bits (shading, two-sided) are ignored. ``OBJECT light`` sections are skipped with their subtree.

Errors are one line: ``<file>:<line>: expected ..., got ...`` (a :class:`DataError`).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np

from .common import DataError

__all__ = ["AC3DMesh", "read_ac3d", "parse_ac3d", "SURFACE_POLYGON", "SURFACE_CLOSED_LINE", "SURFACE_LINE",
           "SURFACE_STRIP"]

SURFACE_POLYGON, SURFACE_CLOSED_LINE, SURFACE_LINE, SURFACE_STRIP = 0, 1, 2, 4
OBJECT_TYPES = ("world", "poly", "group", "light")
#: object tokens with no geometric meaning, skipped with their arguments
_SKIPPED = frozenset({"name", "texture", "texrep", "texoff", "crease", "subdiv", "url", "hidden", "locked",
                      "folded"})


@dataclass
class AC3DMesh:
    """A model's triangles in the file's coordinates, every object transform applied.

    ``vertices (V, 3)`` float64, ``faces (F, 3)`` int64; ``parts``: one ``(path, first_face,
    stop_face)`` per object that has triangles, ``path`` the ``/``-joined object names from the
    root; ``lines``: how many line surfaces were skipped; ``missing_kids``: objects announced by a
    ``kids`` line but absent at the end of the file (only with ``strict=False``).
    """

    vertices: np.ndarray
    faces: np.ndarray
    parts: list = field(default_factory=list)
    lines: int = 0
    source: str = ""
    missing_kids: int = 0

    def part_mask(self, keep) -> np.ndarray:
        """Boolean ``(F,)``: the faces of the parts whose path ``keep(path)`` is true."""
        mask = np.zeros(len(self.faces), dtype=bool)
        for path, a, b in self.parts:
            if keep(path):
                mask[a:b] = True
        return mask


class _Lines:
    """The file's lines with a cursor; errors name the file and the 1-based line number."""

    def __init__(self, text: str, name: str) -> None:
        # keep '\r' inside the lines so that 'data N' counts the characters the file really has
        self.raw = text.split("\n")
        if self.raw and self.raw[-1] == "":
            self.raw.pop()
        self.name = name
        self.i = 0
        self.filled = [k for k, line in enumerate(self.raw) if line.strip()]

    def fail(self, expected: str, at: Optional[int] = None) -> DataError:
        at = self.i if at is None else at
        got = repr(self.raw[at].strip()[:60]) if at < len(self.raw) else "the end of the file"
        return DataError(f"{self.name}:{at + 1}: expected {expected}, got {got}")

    def at_end(self) -> bool:
        """True when only blank lines (or nothing) remain."""
        return bisect.bisect_left(self.filled, self.i) == len(self.filled)

    def next_words(self, expected: str) -> list[str]:
        """The next non-blank line split into words (the cursor moves past it)."""
        while self.i < len(self.raw) and not self.raw[self.i].strip():
            self.i += 1
        if self.i >= len(self.raw):
            raise self.fail(expected)
        self.i += 1
        return self.raw[self.i - 1].split()

    def block(self, n: int, expected: str) -> list[int]:
        """The indices of the next ``n`` non-blank lines (blank lines inside a vertex or refs
        block are allowed, as in SimGear's stream reader), or fail at the end of the file."""
        p = bisect.bisect_left(self.filled, self.i)
        if p + n > len(self.filled):
            raise self.fail(expected, len(self.raw))
        rows = self.filled[p:p + n]
        if n:
            self.i = rows[-1] + 1
        return rows


def _int(word: str, lines: _Lines, expected: str, at: int, base: int = 10) -> int:
    try:
        value = int(word, base)
    except ValueError:
        raise lines.fail(expected, at) from None
    if value < 0:
        raise lines.fail(expected, at)
    return value


def _floats(words: list[str], n: int, lines: _Lines, expected: str, at: int) -> np.ndarray:
    if len(words) != n:
        raise lines.fail(expected, at)
    try:
        out = np.array([float(w) for w in words])
    except ValueError:
        raise lines.fail(expected, at) from None
    if not np.isfinite(out).all():
        raise lines.fail(expected, at)
    return out


def _number_block(lines: _Lines, rows: list[int], cols: int, expected: str) -> np.ndarray:
    """Lines ``rows`` parsed as a ``(len(rows), cols)`` float array (vectorised), or a one-line
    error at the first bad line."""
    if not rows:
        return np.zeros((0, cols))
    chunk = [lines.raw[k] for k in rows]
    words = " ".join(chunk).split()
    if len(words) == cols * len(chunk):
        try:
            arr = np.array(words).astype(np.float64).reshape(-1, cols)
            if np.isfinite(arr).all():
                return arr
        except ValueError:
            pass
    for k, line in zip(rows, chunk):  # slow path only to name the bad line
        w = line.split()
        try:
            ok = len(w) == cols and all(np.isfinite(float(x)) for x in w)
        except ValueError:
            ok = False
        if not ok:
            raise lines.fail(expected, k)
    raise lines.fail(expected, rows[0])  # pragma: no cover - unreachable


def _skip_data(lines: _Lines, n: int) -> None:
    """Skip the ``n`` characters of a ``data n`` block (they may span lines) and its newline."""
    remaining = n
    while remaining > 0:
        if lines.i >= len(lines.raw):
            raise lines.fail(f"{n} characters of object data")
        remaining -= len(lines.raw[lines.i]) + 1  # the line and its '\n'
        lines.i += 1


def _surface_flags(word: str, lines: _Lines, at: int) -> int:
    try:
        return int(word, 0)  # '0x30', '0X10', '0'
    except ValueError:
        return _int(word, lines, "'SURF <flags>' with hex or decimal flags", at)  # '010'


def _read_surfaces(lines: _Lines, count: int, num_vert: int) -> tuple[np.ndarray, int]:
    """``count`` surfaces -> (triangles ``(T, 3)`` of the object's vertices, number of line surfaces)."""
    spans = []  # (type, refs line numbers): all refs lines are parsed together below
    n_lines = 0
    for _ in range(count):
        w = lines.next_words("'SURF <flags>'")
        at = lines.i - 1
        if len(w) != 2 or w[0] != "SURF":
            raise lines.fail("'SURF <flags>'", at)
        kind = _surface_flags(w[1], lines, at) & 0xF
        if kind not in (SURFACE_POLYGON, SURFACE_CLOSED_LINE, SURFACE_LINE, SURFACE_STRIP):
            raise lines.fail("surface type 0 (polygon), 1 / 2 (line) or 4 (strip) in the low 4 bits of SURF", at)
        w = lines.next_words("'mat <index>' or 'refs <n>'")
        if w and w[0] == "mat":
            if len(w) != 2:
                raise lines.fail("'mat <index>'", lines.i - 1)
            _int(w[1], lines, "'mat <index>'", lines.i - 1)
            w = lines.next_words("'refs <n>'")
        at = lines.i - 1
        if len(w) != 2 or w[0] != "refs":
            raise lines.fail("'refs <n>'", at)
        n = _int(w[1], lines, "'refs <n>' with n >= 0", at)
        rows = lines.block(n, f"{n} lines '<vertex index> <u> <v>' (surface at line {at + 1})")
        n_lines += kind in (SURFACE_CLOSED_LINE, SURFACE_LINE)
        spans.append((kind, rows))
    if not spans:
        return np.zeros((0, 3), dtype=np.int64), n_lines
    kinds = np.array([s[0] for s in spans])
    sizes = np.array([len(s[1]) for s in spans])
    idx = _refs_indices(lines, [k for _, rows in spans for k in rows], num_vert)
    offsets = np.cumsum(sizes) - sizes
    tris = []
    poly = np.flatnonzero((kinds == SURFACE_POLYGON) & (sizes >= 3))
    if len(poly):  # fan: (v0, v_k, v_k+1), k = 1 .. n-2, all polygons at once
        ntri = sizes[poly] - 2
        first = np.repeat(offsets[poly], ntri)
        k = np.arange(ntri.sum()) - np.repeat(np.cumsum(ntri) - ntri, ntri) + 1
        tris.append(np.stack([idx[first], idx[first + k], idx[first + k + 1]], axis=1))
    for s in np.flatnonzero((kinds == SURFACE_STRIP) & (sizes >= 3)):
        strip = idx[offsets[s]:offsets[s] + sizes[s]]
        k = np.arange(len(strip) - 2)
        t = np.stack([strip[k], strip[k + 1], strip[k + 2]], axis=1)
        t[1::2] = t[1::2][:, [1, 0, 2]]  # every other strip triangle flipped: one winding
        tris.append(t)
    return (np.concatenate(tris) if tris else np.zeros((0, 3), dtype=np.int64)), n_lines


def _refs_indices(lines: _Lines, line_of: list[int], num_vert: int) -> np.ndarray:
    """The vertex indices of the 'index u v' lines ``line_of``, checked; errors name the bad line."""
    rows = [lines.raw[k] for k in line_of]
    words = " ".join(rows).split()
    idx = None
    if len(words) == 3 * len(rows):
        try:
            idx = np.array(words[0::3]).astype(np.int64)
            uv = np.array(words[1::3] + words[2::3]).astype(np.float64)
            if not np.isfinite(uv).all():
                idx = None
        except ValueError:
            idx = None
    if idx is None:  # find the first malformed line
        for k, row in zip(line_of, rows):
            w = row.split()
            try:
                ok = len(w) == 3 and int(w[0]) >= 0 and bool(np.isfinite([float(w[1]), float(w[2])]).all())
            except ValueError:
                ok = False
            if not ok:
                raise lines.fail("'<vertex index> <u> <v>'", k)
        raise lines.fail("'<vertex index> <u> <v>'", line_of[0])  # pragma: no cover - unreachable
    out = np.flatnonzero((idx < 0) | (idx >= num_vert))
    if len(out):
        raise lines.fail(f"a vertex index in 0..{num_vert - 1}", line_of[int(out[0])])
    return idx


def parse_ac3d(text: str, name: str = "<ac3d>", strict: bool = True) -> AC3DMesh:
    """Parse the text of an AC3D file (see module docstring); ``name`` appears in errors.

    ``strict=False`` accepts a file that ends, after a complete object, before every child an
    earlier ``kids N`` announced has come (SimGear loads such files; 13 of FlightGear's 212 AI
    models are written so); the number of missing objects is kept in :attr:`AC3DMesh.missing_kids`.
    Anything else malformed is an error either way.
    """
    lines = _Lines(text, name)
    head = lines.next_words("the header 'AC3D<version>'")
    if not head or not head[0].startswith("AC3D") or len(head[0]) < 5:
        raise lines.fail("the header 'AC3D<version>' (e.g. 'AC3Db')", lines.i - 1)
    verts_out, faces_out, parts = [], [], []
    n_verts, n_faces, n_lines = 0, 0, 0
    # iterative depth-first walk: each stack entry is a parent frame (R, t, path, kids left, skipped)
    stack: list[list] = []
    root_seen = False
    missing = 0
    while True:
        if stack and stack[-1][3] == 0:
            stack.pop()
            continue
        if not stack and root_seen:
            break
        if stack and not strict and lines.at_end():
            missing = sum(entry[3] for entry in stack)  # 'kids N' promised more objects than follow
            break
        w = lines.next_words("'OBJECT <type>'" if stack or root_seen else "'MATERIAL ...' or 'OBJECT world'")
        at = lines.i - 1
        if not stack and w and w[0] in ("MATERIAL", "MAT"):
            if w[0] == "MAT":  # AC3Dc material block: skip to ENDMAT
                while lines.next_words("'ENDMAT'")[:1] != ["ENDMAT"]:
                    pass
            continue
        if len(w) != 2 or w[0] != "OBJECT" or w[1] not in OBJECT_TYPES:
            raise lines.fail(f"'OBJECT <type>' with type one of {', '.join(OBJECT_TYPES)}", at)
        if stack:
            stack[-1][3] -= 1
        root_seen = True
        kind = w[1]
        R, t = np.eye(3), np.zeros(3)
        obj_name = kind
        local_v: Optional[np.ndarray] = None
        tris = []
        while True:  # the object's own section, up to 'kids'
            w = lines.next_words(f"an object token or 'kids <n>' (object at line {at + 1})")
            k = lines.i - 1
            tok = w[0]
            if tok == "kids":
                if len(w) != 2:
                    raise lines.fail("'kids <n>'", k)
                kids = _int(w[1], lines, "'kids <n>' with n >= 0", k)
                break
            if tok == "name":
                obj_name = " ".join(w[1:]).strip('"') or obj_name
            elif tok == "data":
                if len(w) != 2:
                    raise lines.fail("'data <n>'", k)
                _skip_data(lines, _int(w[1], lines, "'data <n>' with n >= 0", k))
            elif tok == "rot":
                R = _floats(w[1:], 9, lines, "'rot' and 9 numbers (a row-major 3x3 matrix)", k).reshape(3, 3)
            elif tok == "loc":
                t = _floats(w[1:], 3, lines, "'loc x y z'", k)
            elif tok == "numvert":
                if len(w) != 2:
                    raise lines.fail("'numvert <n>'", k)
                n = _int(w[1], lines, "'numvert <n>' with n >= 0", k)
                rows = lines.block(n, f"{n} vertex lines 'x y z' after line {k + 1}")
                local_v = _number_block(lines, rows, 3, "a vertex 'x y z'")
            elif tok == "numsurf":
                if len(w) != 2:
                    raise lines.fail("'numsurf <n>'", k)
                n = _int(w[1], lines, "'numsurf <n>' with n >= 0", k)
                nv = 0 if local_v is None else len(local_v)
                t_obj, nl = _read_surfaces(lines, n, nv)
                tris.append(t_obj)
                n_lines += nl
            elif tok in _SKIPPED:
                pass
            elif tok in ("OBJECT", "SURF", "refs", "mat", "MATERIAL") or not tok[0].isalpha():
                raise lines.fail(f"an object token or 'kids <n>' (object at line {at + 1})", k)
            # other words: tokens of later format versions, ignored as the format notes allow
        parent = stack[-1] if stack else [np.eye(3), np.zeros(3), "", 0, False]
        # world transform of this object: x -> R_p (R x + t) + t_p
        Rw, tw = parent[0] @ R, parent[0] @ t + parent[1]
        path = f"{parent[2]}/{obj_name}" if parent[2] else obj_name
        skipped = parent[4] or kind == "light"
        tri = np.concatenate(tris) if tris else np.zeros((0, 3), dtype=np.int64)
        if not skipped and local_v is not None and len(tri):
            verts_out.append(local_v @ Rw.T + tw)
            faces_out.append(tri + n_verts)
            parts.append((path, n_faces, n_faces + len(tri)))
            n_verts += len(local_v)
            n_faces += len(tri)
        if kids:
            stack.append([Rw, tw, path, kids, skipped])
    while lines.i < len(lines.raw) and not lines.raw[lines.i].strip():
        lines.i += 1
    if lines.i < len(lines.raw):
        raise lines.fail("the end of the file after the last object")
    if not faces_out:
        raise DataError(f"{name}: no polygon surfaces (expected at least one triangle)")
    return AC3DMesh(np.concatenate(verts_out), np.concatenate(faces_out).astype(np.int64), parts, n_lines, name,
                    missing)


def read_ac3d(path: Union[str, Path], strict: bool = True) -> AC3DMesh:
    """Read an ``.ac`` file (text; bytes outside ASCII are read as Latin-1) -> :class:`AC3DMesh`
    (``strict``: see :func:`parse_ac3d`)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read the AC3D file ({e.strerror or e})") from None
    if b"\0" in data[:4096]:
        raise DataError(f"{path}:1: expected an AC3D text file, got binary data")
    return parse_ac3d(data.decode("latin-1"), str(path), strict)
