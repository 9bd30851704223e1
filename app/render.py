"""Pure rendering of a compact trace: one row at one pass -> coloured token HTML, and edit passes -> diffs.

Nothing here touches a model or Gradio. The unit of display is the *pass view*: the region as it was
before pass ``s``, walked gap by gap by :func:`core.trace.walk_pass` (the walk replay uses), with every
token tagged by what the pass did to it. Deleted tokens stay visible (struck through) and inserted ones
appear in their gap, so one line shows both the old and the new sequence.

Pass numbers in the UI count from 0 (the initial canvas) to ``num_passes`` (after the last pass);
pass ``k >= 1`` is trace index ``k - 1``.
"""

from __future__ import annotations

import difflib
import html
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from refinery.core.trace import CompactTrace, walk_pass

MASK_GLYPH = "░"
# kind -> (background, text colour, legend text). Inline styles, so the colours survive any page CSS.
EVENT_STYLES = {
    "unmasked": ("#bbf7d0", "#14532d", "unmasked this pass"),
    "remasked": ("#fed7aa", "#7c2d12", "re-masked this pass"),
    "replaced": ("#bfdbfe", "#1e3a8a", "replaced this pass"),
    "deleted": ("#fecaca", "#7f1d1d", "deleted this pass"),
    "inserted": ("#e9d5ff", "#581c87", "inserted this pass"),
}
MASK_STYLE = ("#e5e7eb", "#6b7280", "still masked")
RUN_STYLE = ("#f3f4f6", "#6b7280", "repeated special token")
CSS = """
.rf-board { display: grid; grid-template-columns: repeat(auto-fit, minmax(320px, 1fr)); gap: 12px; }
.rf-col { border: 1px solid #d1d5db; border-radius: 8px; padding: 8px; min-width: 0; }
.rf-head { font-weight: 600; margin-bottom: 4px; }
.rf-meta { font-size: 0.85em; color: #4b5563; margin-bottom: 6px; }
.rf-seq { font-family: ui-monospace, monospace; font-size: 0.9em; line-height: 1.9; white-space: pre-wrap;
          word-break: break-all; }
.rf-seq .tok { border-radius: 3px; padding: 1px 0; }
.rf-final { font-family: ui-monospace, monospace; white-space: pre-wrap; background: #f9fafb; padding: 6px;
            border-radius: 6px; margin-top: 6px; }
.rf-legend .tok { padding: 1px 6px; margin-right: 8px; border-radius: 3px; }
.rf-diff { font-family: ui-monospace, monospace; font-size: 0.85em; margin-top: 6px; }
"""


class TokenPieces:
    """Token id -> display text, cached (a 126k vocabulary is only decoded where it is seen).

    ``mask_id`` is shown as a placeholder glyph; special tokens keep their literal form."""

    def __init__(self, tokenizer, mask_id: int):
        self.tokenizer, self.mask_id = tokenizer, int(mask_id)
        self.special = set(int(i) for i in getattr(tokenizer, "all_special_ids", []))
        self._cache: dict[int, str] = {}

    def piece(self, token_id: int) -> str:
        token_id = int(token_id)
        if token_id == self.mask_id:
            return MASK_GLYPH
        if token_id not in self._cache:
            text = self.tokenizer.decode([token_id], skip_special_tokens=False)
            if "\ufffd" in text:  # a byte-level piece of a multi-byte character: show the raw token instead
                text = f"⟨{self.tokenizer.convert_ids_to_tokens(token_id)}⟩"
            self._cache[token_id] = text
        return self._cache[token_id]

    def text(self, ids: Sequence[int]) -> str:
        """Decode a run of ids (merging byte-level pieces properly), masks as the placeholder glyph."""
        out, run = [], []
        for i in map(int, ids):
            if i == self.mask_id:
                if run:
                    out.append(self.tokenizer.decode(run, skip_special_tokens=False))
                    run = []
                out.append(MASK_GLYPH)
            else:
                run.append(i)
        if run:
            out.append(self.tokenizer.decode(run, skip_special_tokens=False))
        return "".join(out)


@dataclass(frozen=True)
class Item:
    """One displayed token of a pass view: ``kind`` is an event kind or None (untouched)."""

    token: int  # the token shown (new token for unmasked/replaced/inserted, old one for deleted)
    kind: Optional[str] = None
    old: Optional[int] = None  # the token it replaced / the token that was re-masked


def _diff_items(old: Sequence[int], new: Sequence[int]) -> list[Item]:
    """Items that turn ``old`` into ``new`` (a token diff): replaced pairwise where a changed span keeps
    its length, else deleted and inserted."""
    old, new = [int(t) for t in old], [int(t) for t in new]
    items: list[Item] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_opcodes():
        if op == "equal":
            items += [Item(t) for t in old[i1:i2]]
        elif op == "replace" and i2 - i1 == j2 - j1:
            items += [Item(t, "replaced", o) for o, t in zip(old[i1:i2], new[j1:j2])]
        else:
            items += [Item(t, "deleted") for t in old[i1:i2]] + [Item(t, "inserted") for t in new[j1:j2]]
    return items


def reverted_pass(trace: CompactTrace, row: int, s: int) -> Optional[int]:
    """For a row that went back to an earlier text in trace pass ``s``: the pass that text is from (the
    text before it); None for any other pass."""
    ev = trace.events.get("reverted")
    if ev is None:
        return None
    hit = ev[(ev[:, 0] == s) & (ev[:, 1] == row)]
    return int(hit[0, 3]) if len(hit) else None


def pass_items(trace: CompactTrace, row: int, k: int) -> list[Item]:
    """The items of row ``row`` at UI pass ``k`` (0 = initial canvas, k = after trace pass k-1)."""
    if not 0 <= k <= trace.num_passes:
        raise ValueError(f"pass {k} out of range 0..{trace.num_passes}")
    if k == 0:
        return [Item(int(t)) for t in trace.initial[row, : trace.initial_lengths[row]]]
    s = k - 1
    since = reverted_pass(trace, row, s)
    if since is not None:  # the row went back to its text from before pass ``since``: show the difference
        return _diff_items(trace.region_before(s, row), trace.region_before(since, row))
    walk = walk_pass(trace.region_before(s, row), trace.row_events(s, row), trace.mask_id)  # replay's own walk
    return [Item(token, kind, old) for kind, token, old in walk]


def _token_span(item: Item, pieces: TokenPieces) -> str:
    text = html.escape(pieces.piece(item.token)).replace("\n", "↵\n")
    if item.kind is not None:
        bg, fg, _ = EVENT_STYLES[item.kind]
        shown_old = item.old is not None and item.kind in ("replaced", "remasked")
        title = item.kind + (f", was {pieces.piece(item.old)!r}" if shown_old else "")
        extra = "text-decoration: line-through;" if item.kind == "deleted" else ""
        return (f'<span class="tok ev-{item.kind}" style="background:{bg};color:{fg};{extra}" '
                f'title="{html.escape(title)}">{text}</span>')
    if item.token == pieces.mask_id:
        bg, fg, _ = MASK_STYLE
        return f'<span class="tok tok-mask" style="background:{bg};color:{fg}">{text}</span>'
    cls = "tok tok-special" if item.token in pieces.special else "tok"
    return f'<span class="{cls}">{text}</span>'


def items_html(items: Sequence[Item], pieces: TokenPieces, collapse_from: int = 3) -> str:
    """Token spans. A trailing run of >= ``collapse_from`` untouched identical special tokens (the EOS / mask
    tail) folds into one chip with a count, so a 1024-token canvas stays readable; runs inside the text stay
    token by token, so positions read true."""
    out, i = [], 0
    while i < len(items):
        it = items[i]
        j = i
        if it.kind is None and it.token in pieces.special:
            while j + 1 < len(items) and items[j + 1] == it:
                j += 1
        if j - i + 1 >= collapse_from and j == len(items) - 1:
            label = html.escape(pieces.piece(it.token))
            cls, (bg, fg, _) = ("tok-mask", MASK_STYLE) if it.token == pieces.mask_id else ("tok-special", RUN_STYLE)
            out.append(f'<span class="tok {cls} tok-run" style="background:{bg};color:{fg}">'
                       f'{label} ×{j - i + 1}</span>')
            i = j + 1
            continue
        out.append(_token_span(it, pieces))
        i += 1
    return "".join(out)


def legend_html() -> str:
    """A one-line legend of the event colours and the mask placeholder."""
    chips = [f'<span class="tok ev-{k}" style="background:{bg};color:{fg}">{html.escape(txt)}</span>'
             for k, (bg, fg, txt) in EVENT_STYLES.items()]
    bg, fg, txt = MASK_STYLE
    chips.append(f'<span class="tok tok-mask" style="background:{bg};color:{fg}">{MASK_GLYPH} {txt}</span>')
    return f'<div class="rf-legend">{"".join(chips)}</div>'


@dataclass(frozen=True)
class EditHunk:
    """A contiguous span of token edits in one pass: ``old`` ids became ``new`` ids at pre-pass ``position``."""

    position: int
    old: tuple[int, ...]
    new: tuple[int, ...]
    context: tuple[int, ...] = ()  # untouched tokens just before the hunk, to say where it is

    @property
    def kind(self) -> str:
        return "insert" if not self.old else "delete" if not self.new else "replace"


def edit_hunks(items: Sequence[Item], context: int = 4) -> list[EditHunk]:
    """Group contiguous touched items of a pass view into hunks (an insert next to a replace is one hunk)."""
    hunks: list[EditHunk] = []
    pos, i = 0, 0  # pos counts pre-pass positions (inserted items occupy none)
    while i < len(items):
        if items[i].kind is None:
            pos, i = pos + 1, i + 1
            continue
        start, old, new = pos, [], []
        before = tuple(it.token for it in items[max(0, i - context): i] if it.kind is None)
        while i < len(items) and items[i].kind is not None:
            it = items[i]
            if it.kind == "inserted":
                new.append(it.token)
            elif it.kind == "deleted":
                old.append(it.token)
                pos += 1
            else:  # replaced / unmasked / remasked: one old token became one new token
                old.append(it.old if it.old is not None else it.token)
                new.append(it.token)
                pos += 1
            i += 1
        hunks.append(EditHunk(start, tuple(old), tuple(new), before))
    return hunks


def describe_hunk(hunk: EditHunk, pieces: TokenPieces) -> str:
    """'insert `total = 0`', 'replace `lst` with `lst:`', 'delete `x`', each with ' after `...`' context."""
    old, new = pieces.text(hunk.old), pieces.text(hunk.new)
    verb = {"insert": f"insert `{new}`", "delete": f"delete `{old}`",
            "replace": f"replace `{old}` with `{new}`"}[hunk.kind]
    where = f" after `{pieces.text(hunk.context)}`" if hunk.context else " at the start"
    return f"{verb}{where} (position {hunk.position})"


def diff_html(hunks: Sequence[EditHunk], pieces: TokenPieces) -> str:
    """An edit pass as a list of <del>/<ins> lines."""
    if not hunks:
        return '<div class="rf-diff">no edits in this pass</div>'
    lines = []
    for h in hunks:
        old = f'<del style="background:#fecaca">{html.escape(pieces.text(h.old))}</del>' if h.old else ""
        new = f'<ins style="background:#bbf7d0">{html.escape(pieces.text(h.new))}</ins>' if h.new else ""
        ctx = html.escape(pieces.text(h.context))
        lines.append(f"<li><b>{h.kind}</b> <span style='color:#6b7280'>…{ctx}</span>{old}{new}"
                     f" <span style='color:#6b7280'>@{h.position}</span></li>")
    return f'<ol class="rf-diff">{"".join(lines)}</ol>'


@dataclass
class TraceView:
    """One row of one strategy's trace plus what the column header shows."""

    label: str
    trace: Optional[CompactTrace] = None
    row: int = 0
    nfe: Optional[int] = None
    max_nfe: Optional[int] = None
    final_text: Optional[str] = None
    correct: Optional[bool] = None
    note: str = ""  # "running", "waiting", an error message, the scorer's extracted answer...
    pieces: Optional[TokenPieces] = field(default=None, repr=False)

    @property
    def num_passes(self) -> int:
        return 0 if self.trace is None else self.trace.num_passes


def column_html(view: TraceView, k: int) -> str:
    """One strategy column at UI pass ``k`` (clamped to the passes this strategy made)."""
    head = f'<div class="rf-head">{html.escape(view.label)}</div>'
    if view.trace is None or view.pieces is None:
        return f'<div class="rf-col">{head}<div class="rf-meta">{html.escape(view.note or "waiting")}</div></div>'
    k = max(0, min(int(k), view.num_passes))
    phase = str(view.trace.phases[k - 1]) if k else "initial"
    nfe = f"NFE {view.nfe}" + (f"/{view.max_nfe}" if view.max_nfe else "") if view.nfe is not None else ""
    since = reverted_pass(view.trace, view.row, k - 1) if k else None
    took_back = f"back to the text before pass {since + 1} (it scored higher)" if since is not None else ""
    meta = " · ".join(x for x in (f"pass {k}/{view.num_passes}", f"phase {phase}", took_back, nfe, view.note) if x)
    items = pass_items(view.trace, view.row, k)
    body = f'<div class="rf-seq">{items_html(items, view.pieces)}</div>'
    if phase == "edit":
        body += diff_html(edit_hunks(items), view.pieces)
    tail = ""
    if view.final_text is not None:
        verdict = {True: "✓ correct", False: "✗ incorrect", None: ""}[view.correct]
        tail = (f'<div class="rf-meta" style="margin-top:6px">final text {verdict}</div>'
                f'<div class="rf-final">{html.escape(view.final_text)}</div>')
    return f'<div class="rf-col">{head}<div class="rf-meta">{html.escape(meta)}</div>{body}{tail}</div>'


def board_html(views: Sequence[TraceView], k: int) -> str:
    """All strategy columns side by side, with the legend on top."""
    cols = "".join(column_html(v, k) for v in views)
    return f'{legend_html()}<div class="rf-board">{cols}</div>'


def final_ids(trace: CompactTrace, row: int) -> np.ndarray:
    """The row's tokens after the last pass (its initial canvas when there were no passes)."""
    if trace.num_passes == 0:
        return trace.initial[row, : trace.initial_lengths[row]]
    return trace.tokens[-1, row, : trace.lengths[-1, row]]

