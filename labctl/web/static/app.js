// labctl web: the page. Every number it shows comes from the lab, through /api/ (README: labctl web).
import { clock, el, events, get, post } from "./api.js";
import { Diagram } from "./diagram.js";

const $ = (id) => document.getElementById(id);
let topology = { lanes: [], hosts: [] };
let chosen = null; // the message whose journey is shown

const diagram = new Diagram($("lanes"), $("diagram"), showDialogue, (shown, all) => {
  $("count").textContent = `${shown} of ${all} exchanges`;
});

function showDialogue(x) {
  if (!x) return;
  $("dialogue-box").hidden = false;
  $("dialogue-title").textContent = `Dialogue #${x.id}: ${x.client} → ${x.server}`;
  $("dialogue").textContent = x.text;
}
$("dialogue-close").addEventListener("click", () => { $("dialogue-box").hidden = true; });

function filters() {
  const since = $("since").value;
  diagram.setFilter({ proto: $("proto").value, since: since ? Date.now() / 1000 - Number(since) : null });
}
$("proto").addEventListener("change", filters);
$("since").addEventListener("change", filters);

function say(where, text, bad = false) {
  $(where).textContent = text;
  $(where).classList.toggle("bad", bad);
}

// -- hosts --------------------------------------------------------------------------------------

function showTopology(topo) {
  topology = topo;
  $("lab-name").textContent = topo.lab;
  diagram.setTopology(topo);
  $("hosts").replaceChildren(...topo.hosts.map((h) => el("div", { class: `host ${h.state === "running" ? "up" : "down"}`,
    "data-host": h.name },
  el("div", { class: "host-name" }, `${h.name} `, el("span", { class: "state" }, h.state)),
  el("div", { class: "muted" }, `${h.fqdn} · ${h.address}`),
  el("div", { class: "muted" }, `${h.role}: ${h.ports}`),
  el("div", { class: "actions" }, ...["stop", "start", "kill"].map((a) => el("button", {
    type: "button", "data-action": a, disabled: (a === "start") === (h.state === "running"),
    onclick: () => hostAction(h.name, a),
  }, a))))));
  const users = topo.hosts.filter((h) => h.kind === "mua");
  for (const id of ["send-from", "fetch-user"]) {
    const select = $(id);
    const was = select.value;
    select.replaceChildren(...users.map((u) => el("option", { value: u.name }, `${u.name} (${u.user})`)));
    if (was) select.value = was;
  }
  if (!$("send-to").value && users.length > 1) $("send-to").value = users[users.length - 1].user;
  if (users.length > 1 && !$("fetch-user").dataset.touched) $("fetch-user").value = users[users.length - 1].name;
}

async function hostAction(host, action) {
  say("action-out", `${action} ${host}…`);
  try {
    const h = await post(`hosts/${encodeURIComponent(host)}/${action}`);
    say("action-out", `${h.name}: ${h.state}`);
    showTopology(await get("topology"));
  } catch (e) { say("action-out", e.message, true); }
}

$("flush").addEventListener("click", async () => {
  say("action-out", "flushing…");
  try {
    const r = await post("queue/flush");
    say("action-out", (r.output + r.errors).trim() || "flushed", !r.ok);
    refreshState();
  } catch (e) { say("action-out", e.message, true); }
});

// -- send and fetch -----------------------------------------------------------------------------

$("fetch-user").addEventListener("change", () => { $("fetch-user").dataset.touched = "1"; });

$("send-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  say("form-out", "sending…");
  try {
    const r = await post("send", { from: $("send-from").value, to: $("send-to").value,
      subject: $("send-subject").value, body: $("send-body").value });
    say("form-out", (r.output + r.errors).trim(), !r.ok);
  } catch (err) { say("form-out", err.message, true); }
});

$("fetch-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  say("form-out", "fetching…");
  try {
    const r = await post("fetch", { user: $("fetch-user").value });
    say("form-out", (r.output + r.errors).trim(), !r.ok);
  } catch (err) { say("form-out", err.message, true); }
});

// -- messages and the journey -------------------------------------------------------------------

async function refreshMessages() {
  const list = await get("messages");
  $("messages").replaceChildren(...list.map((m) => el("li", {
    class: m.message_id === chosen ? "picked" : "", "data-id": m.message_id,
    onclick: () => { chosen = m.message_id; refreshMessages(); },
  }, el("span", { class: "time" }, clock(m.first_seen)), " ", el("b", {}, m.subject || "(no subject)"),
  " ", el("span", { class: "muted" }, `${m.sender || "?"} → ${m.recipients.join(", ") || "?"}`))));
  if (chosen) await showJourney(chosen);
}

async function showJourney(id) {
  let j;
  try { j = await get("journey", { id }); } catch (e) {
    $("journey").replaceChildren(el("p", { class: "bad" }, e.message));
    return;
  }
  $("journey").replaceChildren(
    el("h3", {}, `The journey of ${j.message_id}`, el("span", { class: "muted", id: "journey-count" },
      ` ${j.found} of ${j.steps.length} steps seen on the wire`)),
    el("ol", { class: "steps" }, ...j.steps.map((s) => el("li", { class: s.found ? "found" : "missing",
      "data-step": s.number },
    el("span", { class: "time" }, s.found ? clock(s.time) : "--"), " ",
    el("b", {}, s.name), " ",
    s.found ? `${s.source} → ${s.target}: ${s.summary}` : "MISSING",
    ...(s.found ? s.notes : s.instead.map((i) => `seen instead: ${i}`)).map((n) => el("div", { class: "note" }, n)),
    ...s.hops.map((h) => el("div", { class: "note" }, `${clock(h.time)} hop: ${h.source} → ${h.target}: ${h.summary}`)),
    ))));
}

// -- queue and mailboxes ------------------------------------------------------------------------

async function refreshState() {
  try {
    const q = await get("queue");
    $("queue").replaceChildren(el("h3", {}, `MTA queue: ${q.entries.length} message(s)`),
      el("table", {}, el("tr", {}, ...["id", "sender", "recipient", "status", "attempts", "next try", "last error"]
        .map((t) => el("th", {}, t))),
      ...q.entries.flatMap((e) => e.recipients.map((r) => el("tr", {},
        el("td", {}, e.id), el("td", {}, e.sender || "<>"), el("td", {}, r.address), el("td", {}, r.status),
        el("td", {}, String(r.attempts)), el("td", {}, r.next_attempt ? clock(r.next_attempt) : "-"),
        el("td", {}, r.last_error || "-"))))));
  } catch (e) { $("queue").replaceChildren(el("p", { class: "bad" }, e.message)); }
  try {
    const boxes = await get("mailboxes");
    $("mailboxes").replaceChildren(...boxes.map((b) => b.error ? el("div", { class: "mailbox" },
      el("h3", {}, b.address), el("p", { class: "bad" }, b.error)) : el("div", { class: "mailbox" },
      el("h3", {}, `${b.address} on the server: ${b.messages.length} message(s)`),
      el("ul", {}, ...b.messages.map(mailboxEntry)))));
  } catch (e) { $("mailboxes").replaceChildren(el("p", { class: "bad" }, e.message)); }
}
$("refresh-state").addEventListener("click", refreshState);

// One stored message: its line, and when opened its Received path (oldest hop first) and MIME tree.
function mailboxEntry(m) {
  const received = (m.all_headers || []).filter(([k]) => k === "Received")
    .map(([, v]) => v.replace(/\s+/g, " ").replace(/^from (\S+).* by (\S+).*$/, "$1 → $2")).reverse();
  return el("li", {}, el("details", {},
    el("summary", {}, `${m.number}. ${m.headers?.Subject ?? "(no subject)"} `,
      el("span", { class: "muted" }, `from ${m.headers?.From ?? "?"} · ${m.size} octets`)),
    el("div", { class: "note" }, `Received: ${received.join(", ") || "(none)"}`),
    el("pre", { class: "tree" }, (m.parts || []).map((p) => `${"  ".repeat(p.depth)}${p.number || "·"} ${p.content_type}`
      + `${p.charset ? `; charset=${p.charset}` : ""}${p.encoding ? ` (${p.encoding})` : ""}`
      + `${p.filename ? ` "${p.filename}"` : ""}${p.size !== null && p.size !== undefined ? `, ${p.size} octets` : ""}`)
      .join("\n"))));
}

// -- scenario runs ------------------------------------------------------------------------------

const MARK = { passed: "✓", failed: "✗", error: "!", skipped: "-", running: "…", pending: "·" };

async function refreshRuns() {
  const runs = await get("runs");
  if (!runs.length) return;
  $("runs").replaceChildren(...runs.map((r) => el("div", { class: `run ${r.status}`, "data-run": r.run },
    el("h3", {}, `${MARK[r.status] ?? ""} ${r.scenario} `, el("span", { class: "muted" },
      `${r.file} · ${clock(r.started)} · ${r.status}${r.seconds !== null ? ` in ${r.seconds.toFixed(1)} s` : ""}`)),
    r.message ? el("p", { class: "bad" }, r.message) : null,
    el("ol", { class: "run-steps" }, ...r.steps.map((s) => el("li", { class: s.status, "data-step": s.number },
      `${MARK[s.status] ?? ""} ${s.title}`, s.seconds ? el("span", { class: "muted" }, ` (${s.seconds.toFixed(1)} s)`) : null,
      s.status === "failed" || s.status === "error"
        ? el("div", { class: "note" }, `expected: ${s.expected}`, el("br"), `saw: ${s.seen}`) : null))),
    ...r.notes.map((n) => el("div", { class: "note" }, n)))));
}

// -- live ---------------------------------------------------------------------------------------

// What the stream says often is redrawn at most this often (a burst of exchanges is one refresh).
function debounce(fn, ms) {
  let timer = null;
  return () => { clearTimeout(timer); timer = setTimeout(() => fn().catch(() => {}), ms); };
}
const laterMessages = debounce(refreshMessages, 500);
const laterState = debounce(async () => refreshState(), 3000);
const laterRuns = debounce(refreshRuns, 300);

async function start() {
  // The exchanges first, then the hosts: a state change after the list's last event comes by the stream.
  const list = await get("exchanges");
  showTopology(await get("topology"));
  for (const x of list.exchanges) diagram.put(x, false);
  refreshMessages();
  refreshState();
  refreshRuns();
  events(list.last_event, {
    exchange: (x) => { diagram.put(x); if (x.message_ids.length || x.protocol !== "dns") { laterMessages(); laterState(); } },
    hosts: (topo) => showTopology(topo),
    action: () => laterState(),
    run: () => laterRuns(),
    problem: (p) => { $("problem").hidden = !p.text; $("problem").textContent = p.text || ""; },
  }, (up) => { $("live").textContent = up ? "live" : "reconnecting…"; $("live").classList.toggle("off", !up); });
}

start().catch((e) => { $("problem").hidden = false; $("problem").textContent = e.message; });
