// The page's one door to the server: the token from the URL labctl web printed, JSON in and out.
const token = new URLSearchParams(location.search).get("token") || "";

export async function get(path, params = {}) {
  const query = new URLSearchParams(params).toString();
  const answer = await fetch(`/api/${path}${query ? "?" + query : ""}`, { headers: { "X-Maillab-Token": token } });
  return unwrap(answer);
}

export async function post(path, body = {}) {
  const answer = await fetch(`/api/${path}`, {
    method: "POST",
    headers: { "X-Maillab-Token": token, "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  return unwrap(answer);
}

async function unwrap(answer) {
  const value = await answer.json();
  if (!answer.ok) throw new Error(value.error || `${answer.status} ${answer.statusText}`);
  return value;
}

// The live stream: every event after `since`; the browser resumes by Last-Event-ID on a reconnect.
export function events(since, handlers, onState) {
  const source = new EventSource(`/api/events?${new URLSearchParams({ token, since })}`);
  for (const [type, handle] of Object.entries(handlers)) {
    source.addEventListener(type, (e) => handle(JSON.parse(e.data), Number(e.lastEventId)));
  }
  source.onopen = () => onState(true);
  source.onerror = () => onState(false);
  return source;
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c);
  return node;
}

export function clock(t) {
  if (t === null || t === undefined) return "--";
  const d = new Date(t * 1000);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}
