// The live sequence diagram, drawn by hand in SVG: one lane per host (the article's order), one
// arrow per exchange from its client's lane to its server's, in capture order. Only the rows in
// view are drawn (a capture of 10,000 exchanges is 10,000 rows of data and a few dozen elements).
import { clock } from "./api.js";

const SVG = "http://www.w3.org/2000/svg";
const ROW = 44; // px per arrow
const TIME_W = 130; // px for the time column
const OVERSCAN = 8;
const GROW_MS = 900; // how long a new arrow takes to grow (style.css: .arrow.grow)
const CHAR_W = 8.6; // px, the mean width of a character of the arrows' words (16px sans-serif) // rows drawn beyond the view, so a scroll shows no gap

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

export class Diagram {
  constructor(head, body, onPick, onCount = () => {}) {
    this.onCount = onCount; // (shown, all) after each redraw of the rows
    this.head = head; // the lane names (not scrolled)
    this.body = body; // the scrolled rows
    this.onPick = onPick;
    this.lanes = [];
    this.hosts = new Map();
    this.all = new Map(); // id -> exchange
    this.rows = []; // the exchanges shown, filtered, in order
    this.filter = { proto: "", since: null };
    this.picked = null;
    this.pending = 0; // a redraw is asked for the next frame
    this.fresh = new Map(); // id -> when it arrived: a new arrow grows from its client for a moment
    this.inner = document.createElement("div");
    this.inner.className = "rows";
    this.canvas = svg("svg", { class: "sequence", role: "img", "aria-label": "sequence diagram" });
    this.inner.append(this.canvas);
    this.body.append(this.inner);
    this.body.addEventListener("scroll", () => this.draw());
    new ResizeObserver(() => { this.drawHead(); this.draw(); }).observe(this.body);
  }

  setTopology(topo) {
    this.lanes = topo.lanes;
    this.hosts = new Map(topo.hosts.map((h) => [h.name, h]));
    this.drawHead();
    this.draw();
  }

  // An exchange new or grown (the stream sends the whole exchange each time it gains events);
  // `live`: it just happened (it grows in), not loaded with the page. Redrawn once per frame.
  put(x, live = true) {
    if (live && !this.all.has(x.id)) this.fresh.set(x.id, performance.now());
    this.all.set(x.id, x);
    if (this.picked === x.id) this.onPick(x);
    if (this.pending) return;
    this.pending = requestAnimationFrame(() => {
      this.pending = 0;
      const atEnd = this.body.scrollTop + this.body.clientHeight >= this.body.scrollHeight - ROW;
      this.refilter();
      if (atEnd) this.body.scrollTop = this.body.scrollHeight;
    });
  }

  setFilter(filter) {
    this.filter = filter;
    this.refilter();
  }

  refilter() {
    const { proto, since } = this.filter;
    this.rows = [...this.all.values()]
      .filter((x) => (!proto || x.protocol === proto) && (since === null || x.end >= since))
      .sort((a, b) => a.start - b.start || a.id - b.id);
    this.inner.style.height = `${this.rows.length * ROW + 10}px`;
    this.draw();
    this.onCount(this.rows.length, this.all.size);
  }

  x(lane) {
    const i = this.lanes.indexOf(lane);
    const width = Math.max(this.body.clientWidth, 600) - TIME_W - 20;
    const step = width / Math.max(this.lanes.length, 1);
    return TIME_W + step * ((i < 0 ? this.lanes.length - 0.5 : i) + 0.5);
  }

  drawHead() {
    this.head.replaceChildren();
    const width = Math.max(this.body.clientWidth, 600);
    const top = svg("svg", { class: "lanes", width, height: 56 });
    for (const lane of this.lanes) {
      const h = this.hosts.get(lane);
      const state = h ? h.state : "?";
      const g = svg("g", { class: `lane ${state === "running" ? "up" : "down"}`, "data-host": lane });
      g.append(svg("text", { x: this.x(lane), y: 22, "text-anchor": "middle", class: "lane-name" }, lane));
      g.append(svg("text", { x: this.x(lane), y: 44, "text-anchor": "middle", class: "lane-state" },
        h ? `${h.kind} · ${state}` : ""));
      top.append(g);
    }
    this.head.append(top);
  }

  draw() {
    const width = Math.max(this.body.clientWidth, 600);
    const first = Math.max(0, Math.floor(this.body.scrollTop / ROW) - OVERSCAN);
    const last = Math.min(this.rows.length, Math.ceil((this.body.scrollTop + this.body.clientHeight) / ROW) + OVERSCAN);
    const c = this.canvas;
    c.replaceChildren();
    c.setAttribute("width", width);
    c.setAttribute("height", this.rows.length * ROW + 10);
    const defs = svg("defs");
    for (const kind of ["ok", "fail", "secret", "open"]) {
      const m = svg("marker", { id: `head-${kind}`, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7,
        markerHeight: 7, orient: "auto-start-reverse" });
      m.append(svg("path", { d: "M0,0 L10,5 L0,10 z", class: `head ${kind}` }));
      defs.append(m);
    }
    c.append(defs);
    for (const lane of this.lanes) {
      const h = this.hosts.get(lane);
      c.append(svg("line", { x1: this.x(lane), x2: this.x(lane), y1: first * ROW, y2: last * ROW + ROW,
        class: `lifeline ${h && h.state === "running" ? "up" : "down"}` }));
    }
    for (let i = first; i < last; i++) c.append(this.arrow(this.rows[i], i));
  }

  arrow(x, i) {
    const y = i * ROW + 30;
    const kind = x.failure ? "fail" : x.clear_text_secret ? "secret" : x.state === "open" ? "open" : "ok";
    const born = this.fresh.get(x.id);
    if (born !== undefined && performance.now() - born > GROW_MS) this.fresh.delete(x.id);
    const grows = this.fresh.has(x.id) && kind !== "fail" && kind !== "open" ? " grow" : "";
    const g = svg("g", { class: `arrow ${kind}${grows}${this.picked === x.id ? " picked" : ""}`, "data-id": x.id,
      "data-protocol": x.protocol, "data-from": x.from, "data-to": x.to, tabindex: 0 });
    const x1 = this.x(x.from), x2 = this.x(x.to);
    g.append(svg("rect", { x: 0, y: y - 28, width: "100%", height: ROW, class: "hit" }));
    g.append(svg("text", { x: 6, y: y + 5, class: "time" }, clock(x.start)));
    g.append(svg("line", { x1, x2, y1: y, y2: y, class: "shaft", "marker-end": `url(#head-${kind})` }));
    let words = x.label;
    if (x.failure) words = `✗ ${words}`;
    if (x.clear_text_secret) words = `⚠ password in clear · ${words}`; // first: never cut off
    if (x.encrypted) words = `🔒 ${words}`;
    // The words fit between the time column and the right edge (the whole text is a click away).
    const width = Math.max(this.body.clientWidth, 600);
    const room = Math.max(Math.abs(x2 - x1) + 120, 420);
    const most = Math.floor(room / CHAR_W);
    if (words.length > most) words = words.slice(0, most - 1) + "…";
    const half = (words.length * CHAR_W) / 2;
    const mid = Math.min(Math.max((x1 + x2) / 2, TIME_W + half), width - 10 - half);
    g.append(svg("text", { x: mid, y: y - 8, "text-anchor": "middle", class: "words" }, words));
    const title = svg("title", {}, `${x.client} → ${x.server}\n${x.text}`);
    g.append(title);
    g.addEventListener("click", () => this.pick(x.id));
    g.addEventListener("keydown", (e) => { if (e.key === "Enter") this.pick(x.id); });
    return g;
  }

  pick(id) {
    this.picked = id;
    this.draw();
    this.onPick(this.all.get(id));
  }
}
