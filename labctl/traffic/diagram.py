"""A journey drawn as a sequence diagram: Mermaid text, or a self-contained SVG.

The SVG is written by hand (no dependency): the article's figure as a sequence diagram, one
column per participant (sender's MUA, MTA, DNS, MX, recipient's MUA), one numbered arrow per
step with its time and what crossed; a missing step is a dashed red arrow with what was seen
instead.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

from labctl.traffic.journey import Hop, Journey, JourneyStep
from labctl.traffic.render import clock


def _default_ends(journey: Journey, number: int) -> tuple[int, int]:
    """Where step ``number``'s arrow goes in the article's figure when its hosts are unknown: the
    participants are the sender's MUA, the MTA, the DNS, any backup MX, the MX, the recipient's MUA."""
    mua, mta, dns = 0, 1, 2
    last = len(journey.participants) - 1
    mx = last - 1
    return {1: (mua, mta), 2: (mta, dns), 3: (dns, mta), 4: (mta, mx), 5: (mx, mta), 6: (mx, last)}[number]


def _ends(journey: Journey, step: JourneyStep | Hop, number: int) -> tuple[int, int]:
    hosts = [h for h, _ in journey.participants]
    found = not isinstance(step, JourneyStep) or step.found
    if found and step.source in hosts and step.target in hosts:
        a, b = hosts.index(step.source), hosts.index(step.target)
        if a != b:
            return a, b
    return _default_ends(journey, number)


def _label(step: JourneyStep) -> str:
    return f"{step.number}. {step.name}: {step.summary}" if step.found else f"{step.number}. {step.name}: missing"


def _hop_label(step: JourneyStep, k: int, hop: Hop) -> str:
    return f"{step.number}. {step.name}, hop {k}: {hop.summary}"


def _arrows(journey: Journey) -> list[tuple[JourneyStep, tuple[int, int], str, float | None, str]]:
    """Every arrow of the figure in order: (its step, ends, label, time, detail); a relay through a
    backup MX is an arrow per hop."""
    out = []
    for step in journey.steps:
        out.append((step, _ends(journey, step, step.number), _label(step), step.time, step.detail))
        for k, hop in enumerate(step.hops, start=2):
            out.append((step, _ends(journey, hop, step.number), _hop_label(step, k, hop), hop.time, hop.detail))
    return out


def mermaid(journey: Journey) -> str:
    lines = ["sequenceDiagram"]
    ids = [f"P{i}" for i in range(len(journey.participants))]
    for pid, (host, role) in zip(ids, journey.participants, strict=True):
        lines.append(f"    participant {pid} as {_mm(host)} ({role})")
    for step, (a, b), label, time, _ in _arrows(journey):
        if step.found:
            when = clock(time) if time is not None else ""
            lines.append(f"    {ids[a]}->>{ids[b]}: {_mm(label)} [{when}]")
        else:
            lines.append(f"    {ids[a]}--x{ids[b]}: {_mm(label)}")
            if step.instead:
                lo, hi = sorted((a, b))
                lines.append(f"    Note over {ids[lo]},{ids[hi]}: seen instead: {_mm(step.instead[0])}")
    return "\n".join(lines) + "\n"


def _mm(text: str) -> str:
    # Mermaid ends a message at a newline, reads ";" and "#" specially, and drops what looks like
    # an HTML tag (our "<message, ...>"): its own entity codes keep the angle brackets.
    text = text.replace("\n", " ").replace(";", ",").replace("#", "no.")
    return text.replace("<", "#lt;").replace(">", "#gt;")


# -- SVG --------------------------------------------------------------------------------------------

COLUMN = 230
LEFT = 150  # room for the times
TOP = 30
BOX_W, BOX_H = 190, 46
ROW = 64
FONT = "font-family='DejaVu Sans, Helvetica, Arial, sans-serif'"


def svg(journey: Journey) -> str:
    n = len(journey.participants)
    arrows = _arrows(journey)
    rows = sum(2 if not s.found and s.instead else 1 for s, *_ in arrows)
    width = LEFT + COLUMN * n
    height = TOP + BOX_H + 40 + ROW * rows + 70
    x = [LEFT + COLUMN * i + COLUMN // 2 for i in range(n)]
    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
           f"viewBox='0 0 {width} {height}' {FONT} font-size='13'>",
           "<defs><marker id='arrow' viewBox='0 0 10 10' refX='10' refY='5' markerWidth='8' markerHeight='8' "
           "orient='auto-start-reverse'><path d='M0,0 L10,5 L0,10 z' fill='#1f4e79'/></marker>"
           "<marker id='cross' viewBox='0 0 10 10' refX='5' refY='5' markerWidth='10' markerHeight='10'>"
           "<path d='M1,1 L9,9 M9,1 L1,9' stroke='#c0392b' stroke-width='2'/></marker></defs>",
           f"<rect width='{width}' height='{height}' fill='white'/>"]
    title = f"The journey of {journey.message_id or '(no Message-ID)'}"
    if journey.subject:
        title += f' "{journey.subject}"'
    out.append(f"<text x='16' y='20' font-size='15' font-weight='bold'>{escape(title)}</text>")
    bottom = height - 50
    for i, (host, role) in enumerate(journey.participants):
        bx = x[i] - BOX_W // 2
        out.append(f"<line x1='{x[i]}' y1='{TOP + BOX_H}' x2='{x[i]}' y2='{bottom}' stroke='#888' "
                   "stroke-dasharray='4 4'/>")
        out.append(f"<rect x='{bx}' y='{TOP}' width='{BOX_W}' height='{BOX_H}' rx='6' fill='#dbe9f6' "
                   "stroke='#1f4e79'/>")
        out.append(f"<text x='{x[i]}' y='{TOP + 19}' text-anchor='middle' font-weight='bold'>{escape(host)}</text>")
        out.append(f"<text x='{x[i]}' y='{TOP + 36}' text-anchor='middle' fill='#444'>{escape(role)}</text>")
    y = TOP + BOX_H + 50
    for step, (a, b), label, time, detail in arrows:
        colour = "#1f4e79" if step.found else "#c0392b"
        dash = "" if step.found else " stroke-dasharray='6 4'"
        marker = "url(#arrow)" if step.found else "url(#cross)"
        when = clock(time) if step.found and time is not None else "missing"
        out.append(f"<text x='12' y='{y + 4}' fill='{colour}'>{escape(when)}</text>")
        out.append(f"<line x1='{x[a]}' y1='{y}' x2='{x[b]}' y2='{y}' stroke='{colour}' stroke-width='2'{dash} "
                   f"marker-end='{marker}'/>")
        mid = (x[a] + x[b]) // 2
        out.append(f"<text x='{mid}' y='{y - 8}' text-anchor='middle' fill='{colour}' font-weight='bold'>"
                   f"{escape(_clip(label, max(34, abs(x[b] - x[a]) // 7 + 8)))}</text>")
        if step.found and detail:
            out.append(f"<text x='{mid}' y='{y + 16}' text-anchor='middle' fill='#555' font-size='11'>"
                       f"{escape(_clip(detail, max(40, abs(x[b] - x[a]) // 6 + 10)))}</text>")
        y += ROW
        if not step.found and step.instead:
            for k, seen in enumerate(step.instead[:2]):
                out.append(f"<text x='{LEFT + 10}' y='{y - 30 + 15 * k}' fill='#c0392b' font-size='11'>"
                           f"{escape(_clip('seen instead: ' + seen, 140))}</text>")
            y += ROW
    found = sum(s.found for s in journey.steps)
    out.append(f"<text x='16' y='{height - 20}' fill='#333'>{found} of {len(journey.steps)} steps seen on the wire "
               "(drawn by labctl trace from the captured packets)</text>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _clip(text: str, limit: int) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"
