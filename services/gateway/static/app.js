// The Parley web client: protocol v1 (docs/protocol.md) over one WebSocket, REST for the rest.
import { Mic, Player } from "./audio.js";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "parley.token";
const CONV_KEY = "parley.conversation";
const REPORT_EVERY_MS = 250;
const MAX_BACKOFF_MS = 30000;

// Closes that must not be retried, with what to tell the person.
const FINAL_CLOSES = {
  4400: "the server refused the session start",
  4403: "not allowed (origin or conversation)",
  4404: "no such conversation or avatar",
  4406: "this client's protocol version is not supported",
  4409: "this session was continued in another window",
  4429: "too many live sessions for this user; close one and start again",
  4000: "closed after a long silence; start again to continue",
  4001: "the session reached its maximum length; start again to continue",
};

const player = new Player();
const mic = new Mic();
const state = {
  token: null,
  avatars: new Map(),
  conversationId: null,
  ws: null,
  connection: 0, // counts sockets, so a late event of an old one is ignored
  live: false,
  wanted: false, // the person wants a session open (reconnect when it drops)
  sessionId: null,
  audioSessionId: null,
  lastCursor: null,
  attempt: 0,
  retryTimer: null,
  textSeq: 0,
  pending: [], // typed turns not yet acknowledged: resent (same client_seq) after a resume
  finals: new Set(), // final events seen, so those re-sent after a resume are not shown twice
};

// For tests and debugging: what the page saw and did.
window.parley = { state, player, events: [], closes: [], stops: [], pauses: [], resumes: [], drop: () => dropped("dropped by a test") };

// --- voice to voice: from sending the last sample of speech to the reply's first audio -------

let sentSamples = 0;
let sentLog = []; // [samples sent so far, performance.now()] per mic frame
const spokeAt = {};
const replySpokeAt = {};
const latencyReported = new Set();

function sentAt(sample) {
  for (const [end, t] of sentLog) if (end >= sample) return t;
  return null;
}

function reportLatency(mid) {
  const from = replySpokeAt[mid];
  if (from == null || latencyReported.has(mid)) return;
  latencyReported.add(mid);
  const ms = performance.now() - from;
  send({ type: "latency", message_id: mid, voice_to_voice_ms: ms });
  const view = replyView(mid);
  view.v2v.textContent = ` voice to voice ${Math.round(ms)} ms`;
}

// --- the conversation on screen ------------------------------------------------------------

const views = new Map(); // message id -> view
const heard = {}; // "audio session/utterance" -> partial transcript view

function place(el, at) {
  // History goes in time order before anything live; live events are appended.
  const log = $("log");
  if (at == null) return log.appendChild(el);
  el.dataset.at = at;
  for (const other of log.children) {
    if (other.dataset.at == null || Number(other.dataset.at) > at) return log.insertBefore(el, other);
  }
  return log.appendChild(el);
}

function line(cls, text) {
  const p = document.createElement("p");
  p.className = cls;
  p.textContent = text;
  return place(p);
}

function userView(mid, at) {
  let v = mid && views.get(mid);
  if (!v) {
    const el = document.createElement("p");
    el.className = "user";
    el.innerHTML = '<b>You:</b> <span class="text"></span><span class="unstable"></span>';
    v = { el, text: el.querySelector(".text"), unstable: el.querySelector(".unstable") };
    if (mid) {
      el.dataset.id = mid;
      views.set(mid, v);
    }
    place(el, at);
  }
  return v;
}

function avatarName(avatarId) {
  const a = state.avatars.get(avatarId);
  if (a) return a.name;
  const only = [...state.avatars.values()];
  return only.length === 1 ? only[0].name : "Avatar";
}

function replyView(mid, name, at) {
  let v = views.get(mid);
  if (!v) {
    const el = document.createElement("p");
    el.className = "avatar";
    el.dataset.id = mid;
    el.innerHTML =
      '<b class="name"></b> <span class="text"></span> <span class="tag"></span>' +
      '<a class="audio" target="_blank" rel="noopener" hidden>[audio]</a><span class="v2v"></span>';
    v = {
      el,
      name: el.querySelector(".name"),
      text: el.querySelector(".text"),
      tag: el.querySelector(".tag"),
      audio: el.querySelector(".audio"),
      v2v: el.querySelector(".v2v"),
      deltaSeq: -1,
    };
    v.name.textContent = `${name || avatarName(null)}:`;
    views.set(mid, v);
    place(el, at);
  } else if (name) {
    v.name.textContent = `${name}:`;
  }
  return v;
}

function setStatus(view, status) {
  view.el.dataset.status = status;
  view.el.classList.toggle("interrupted", status === "interrupted");
  view.tag.textContent = status === "complete" || !status ? "" : `[${status}]`;
}

function setAudio(view, url, expired) {
  if (url) {
    view.audio.href = url;
    view.audio.hidden = false;
  } else if (expired) {
    view.tag.textContent += " [audio expired]";
  }
}

function clearLog() {
  $("log").replaceChildren();
  views.clear();
  for (const k of Object.keys(heard)) delete heard[k];
}

// --- REST ------------------------------------------------------------------------------------

async function api(path) {
  const resp = await fetch(path, { headers: { Authorization: `Bearer ${state.token}` } });
  if (resp.status === 401) {
    signOut("Your token was refused or has expired: paste a new one.");
    throw new Error("unauthenticated");
  }
  if (!resp.ok) throw new Error(`${path}: HTTP ${resp.status}`);
  return resp.json();
}

// Lists are plain arrays or pages of {items, next_cursor}.
function page(body) {
  return Array.isArray(body) ? { items: body, next: null } : { items: body.items || [], next: body.next_cursor || null };
}

async function loadAvatars() {
  const list = page(await api("v1/avatars")).items;
  state.avatars = new Map(list.map((a) => [a.id, a]));
  const label = (a) => `${a.name}${a.role_title ? ` (${a.role_title})` : ""}${a.has_voice ? "" : " (no voice)"}`;
  $("avatar").replaceChildren(...list.map((a) => new Option(label(a), a.id)));
}

async function loadConversations() {
  let items = [];
  try {
    items = page(await api("v1/conversations")).items;
  } catch (e) {
    if (e.message === "unauthenticated") throw e;
    // An older gateway has no conversation list: the current one can still be continued.
  }
  const sel = $("conversation");
  sel.replaceChildren(new Option("New conversation", ""));
  for (const c of items) sel.add(conversationOption(c));
  if (state.conversationId && ![...sel.options].some((o) => o.value === state.conversationId)) {
    sel.add(conversationOption({ id: state.conversationId }));
  }
  sel.value = state.conversationId || "";
}

function conversationOption(c) {
  const when = c.updated_at || c.created_at;
  const who = (c.avatar_ids || []).map((a) => state.avatars.get(a)?.name).filter(Boolean).join(", ");
  const about = c.title || (c.last_message && c.last_message.text) || "";
  const parts = [when ? new Date(when).toLocaleString() : `conversation ${c.id.slice(0, 8)}`, who];
  if (about) parts.push(about.length > 40 ? `${about.slice(0, 40)}…` : about);
  return new Option(parts.filter(Boolean).join(" · "), c.id);
}

async function loadHistory() {
  // Pages run oldest first: follow them all, so the latest turns are shown too.
  const conv = state.conversationId;
  const seen = new Set();
  let cursor = null;
  for (let n = 0; conv && n < 100; n++) {
    const query = `?limit=200${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`;
    const { items, next } = page(await api(`v1/conversations/${conv}/messages${query}`));
    if (conv !== state.conversationId) return;
    for (const m of items) showStored(m);
    if (!next || seen.has(next)) return;
    seen.add(next);
    cursor = next;
  }
}

function showStored(m) {
  const at = m.created_at ? Date.parse(m.created_at) : null;
  if (m.role === "user") {
    userView(m.id, at).text.textContent = m.text;
    return;
  }
  const v = replyView(m.id, avatarName(m.avatar_id), at);
  v.text.textContent = m.text;
  setStatus(v, m.status);
  setAudio(v, m.audio_url, m.audio_expired);
}

// --- sign in ---------------------------------------------------------------------------------

function tokenFromUrl() {
  // The stack prints a link with #token=…; a fragment never reaches a server log.
  const m = location.hash.match(/[#&]token=([^&]+)/);
  if (!m) return;
  sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
  history.replaceState(null, "", location.pathname + location.search);
}

function whoIs(token) {
  try {
    const b64 = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(b64));
    return claims.tenant ? `${claims.sub} (${claims.tenant})` : claims.sub;
  } catch (e) {
    return "API key or opaque token";
  }
}

async function signIn(token) {
  state.token = token;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("who").textContent = whoIs(token);
  $("signin").hidden = true;
  $("signin-why").hidden = true;
  $("setup").hidden = false;
  status("signed in");
  try {
    await loadAvatars();
    await loadConversations();
    clearLog();
    await loadHistory();
  } catch (e) {
    if (e.message !== "unauthenticated") status(`could not load: ${e.message}`, true);
  }
}

function signOut(why) {
  state.wanted = false;
  closeSocket();
  stopMic();
  state.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  $("signin").hidden = false;
  $("setup").hidden = true;
  $("signin-why").textContent = why || "";
  $("signin-why").hidden = !why;
  status("signed out", !!why);
  controls(false);
}

// --- the session -----------------------------------------------------------------------------

function status(text, bad = false) {
  $("status").textContent = text;
  $("status").classList.toggle("bad", bad);
}

function controls(live) {
  $("mic").disabled = !state.wanted; // frames go out only while the session is live
  $("stop").disabled = !live;
  // Typing works while reconnecting: the turn goes out once the session is back.
  $("text").disabled = $("send").disabled = $("hangup").disabled = !state.wanted;
  $("connect").disabled = $("avatar").disabled = $("conversation").disabled = state.wanted;
}

function send(obj) {
  if (!state.live) return false;
  state.ws.send(JSON.stringify(obj));
  return true;
}

function open() {
  clearTimeout(state.retryTimer);
  state.retryTimer = null;
  const url = new URL("v1/ws", location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(url, "parley.v1");
  ws.binaryType = "arraybuffer";
  const n = ++state.connection;
  state.ws = ws;
  status(state.sessionId ? "reconnecting…" : "connecting…");
  ws.onopen = () => {
    const resume = state.sessionId ? { session_id: state.sessionId, last_cursor: state.lastCursor } : null;
    ws.send(
      JSON.stringify({
        type: "session.start",
        protocol: 1,
        token: state.token,
        conversation_id: state.conversationId,
        avatar_ids: state.conversationId ? [] : [$("avatar").value].filter(Boolean),
        language: null,
        end_of_turn_ms: null,
        sample_rate: 16000,
        barge_in: $("barge-in").checked,
        resume,
      }),
    );
  };
  ws.onmessage = (m) => {
    if (n !== state.connection) return;
    if (typeof m.data === "string") onEvent(JSON.parse(m.data));
    else onAudio(m.data);
  };
  ws.onclose = (e) => {
    if (n !== state.connection) return;
    onClose(e.code, e.reason);
  };
}

function closeSocket() {
  const ws = state.ws;
  state.ws = null;
  state.live = false;
  state.connection++;
  if (ws && ws.readyState <= 1) ws.close(1000, "client closed");
}

function onClose(code, reason) {
  state.live = false;
  state.ws = null;
  window.parley.closes.push({ code, reason });
  controls(false);
  if (!state.wanted) {
    status("not connected");
    return;
  }
  if (code === 4401) {
    signOut(`The server refused your token (${reason || "expired or invalid"}): paste a new one.`);
    return;
  }
  if (code === 4410) {
    // The session is gone but the conversation is not: a fresh session on it, history reloaded.
    state.sessionId = null;
    state.lastCursor = null;
    clearLog();
    line("meta", "the session could not be resumed; starting a new one in this conversation");
    loadHistory().catch((e) => line("err", `history: ${e.message}`));
    open();
    return;
  }
  if (code in FINAL_CLOSES) {
    state.wanted = false;
    stopMic();
    controls(false);
    status(`closed: ${FINAL_CLOSES[code]}`, code !== 4000 && code !== 4001);
    line("meta", `closed ${code}: ${reason || FINAL_CLOSES[code]}`);
    return;
  }
  // A network drop, a server going away (1001) or not ready yet: try again, backing off.
  const delay = Math.min(MAX_BACKOFF_MS, 500 * 2 ** state.attempt) * (0.75 + Math.random() / 2);
  state.attempt++;
  status(`connection lost (${code}); retrying in ${(delay / 1000).toFixed(1)} s`, true);
  state.retryTimer = setTimeout(open, delay);
}

window.addEventListener("online", () => {
  if (state.wanted && state.retryTimer) open();
});
window.addEventListener("offline", () => dropped("network offline"));

/** Give up on the socket as if the network dropped it (a dead network can take minutes to show). */
function dropped(reason) {
  const ws = state.ws;
  if (!ws) return;
  state.connection++;
  ws.close();
  onClose(1006, reason);
}

function onStarted(ev) {
  state.live = true;
  state.attempt = 0;
  state.sessionId = ev.session_id;
  state.audioSessionId = ev.audio_session_id;
  // Mic sample offsets (the transcripts' end_s) count from each connection's first frame.
  sentSamples = 0;
  sentLog = [];
  if (!ev.resumed) state.textSeq = 0;
  if (state.conversationId !== ev.conversation_id) {
    state.conversationId = ev.conversation_id;
    const sel = $("conversation");
    if (![...sel.options].some((o) => o.value === ev.conversation_id)) {
      sel.add(conversationOption({ id: ev.conversation_id, avatar_ids: [$("avatar").value], created_at: new Date() }));
    }
    sel.value = ev.conversation_id;
  }
  sessionStorage.setItem(CONV_KEY, state.conversationId);
  $("connect").textContent = "Continue";
  controls(true);
  status(ev.resumed ? "connected (resumed)" : "connected");
  if (ev.resumed) line("meta", "reconnected; the session was resumed");
  if (!ev.speech_input) line("meta", "speech input is unavailable right now; typing works");
  // Typed turns the server may not have taken: the same client_seq makes a resend harmless.
  for (const p of state.pending) {
    if (!ev.resumed) p.client_seq = state.textSeq++;
    send({ type: "text", text: p.text, client_seq: p.client_seq });
  }
}

function onEvent(ev) {
  const seen = window.parley.events;
  seen.push(ev);
  if (seen.length > 20000) seen.splice(0, 10000);
  if (ev.cursor != null) {
    state.lastCursor = Math.max(state.lastCursor ?? 0, ev.cursor);
    const key = `${ev.type}/${ev.message_id || ""}/${ev.code || ""}`;
    if (state.finals.has(key)) return;
    state.finals.add(key);
  }
  switch (ev.type) {
    case "session.started":
      onStarted(ev);
      break;
    case "speech.started":
      if (ev.session_id === state.audioSessionId) $("hearing").textContent = "hearing you…";
      break;
    case "speech.stopped":
      if (ev.session_id === state.audioSessionId) $("hearing").textContent = "";
      break;
    case "transcript.partial": {
      const key = `${ev.session_id}/${ev.utterance_seq}`;
      let v = heard[key];
      if (v === null || (v && v.partialSeq >= ev.partial_seq)) break; // final already, or stale
      if (!v) {
        v = heard[key] = userView(null);
        v.el.classList.add("partial");
        v.partialSeq = -1;
      }
      v.partialSeq = ev.partial_seq;
      const stable = ev.text.startsWith(ev.stable) ? ev.stable : "";
      v.text.textContent = stable;
      v.unstable.textContent = `${ev.text.slice(stable.length)} …`;
      break;
    }
    case "transcript.final": {
      const key = `${ev.session_id}/${ev.utterance_seq}`;
      if (ev.session_id === state.audioSessionId && ev.end_s != null) {
        const at = sentAt(Math.round(ev.end_s * 16000));
        if (at != null) spokeAt[ev.message_id] = at;
      }
      let v = heard[key];
      if (v && !views.has(ev.message_id)) {
        v.el.dataset.id = ev.message_id;
        views.set(ev.message_id, v);
      } else {
        if (v) v.el.remove();
        v = userView(ev.message_id);
      }
      heard[key] = null;
      v.el.classList.remove("partial");
      v.text.textContent = ev.text;
      v.unstable.textContent = "";
      break;
    }
    case "user.message": {
      const i = state.pending.findIndex((p) => p.text === ev.text);
      state.pending.splice(i < 0 ? 0 : i, 1);
      userView(ev.message_id).text.textContent = ev.text;
      break;
    }
    case "reply.started":
      if (spokeAt[ev.user_message_id] != null) replySpokeAt[ev.message_id] = spokeAt[ev.user_message_id];
      replyView(ev.message_id, ev.avatar_name || avatarName(ev.avatar_id));
      break;
    case "reply.delta": {
      const v = replyView(ev.message_id);
      if (ev.delta_seq > v.deltaSeq) {
        v.deltaSeq = ev.delta_seq;
        v.text.textContent += ev.text;
      }
      break;
    }
    case "reply.done": {
      const v = replyView(ev.message_id);
      if (v.el.dataset.status !== "interrupted") {
        v.text.textContent = ev.text;
        setStatus(v, ev.status);
      }
      break;
    }
    case "reply.interrupted": {
      const v = replyView(ev.message_id);
      v.text.textContent = ev.text;
      setStatus(v, "interrupted");
      flush(ev.message_id);
      break;
    }
    case "playback.stop": {
      // The person spoke over the reply: silence it now, say so, and tell what was heard.
      window.parley.stops.push(ev.message_id);
      const r = player.replies.get(ev.message_id);
      if (r && r.paused) {
        r.paused = false;
        reportEnd(r);
      } else flush(ev.message_id);
      setStatus(replyView(ev.message_id), "interrupted");
      break;
    }
    case "playback.pause":
      // Speech over the reply that may be a cough: silent now, it resumes or stops.
      window.parley.pauses.push(ev.message_id);
      player.pause(ev.message_id);
      setStatus(replyView(ev.message_id), "paused");
      break;
    case "playback.resume":
      window.parley.resumes.push(ev.message_id);
      player.resume(ev.message_id, ev.sentence_index, ev.offset_ms / 1000);
      setStatus(replyView(ev.message_id), "");
      break;
    case "speech.backchannel": {
      // "Mhm" over the reply: no turn is made of it, so its partial goes.
      const v = heard[`${ev.session_id}/${ev.utterance_seq}`];
      if (v) v.el.remove();
      heard[`${ev.session_id}/${ev.utterance_seq}`] = null;
      break;
    }
    case "audio.end":
      player.reply(ev.message_id).complete = true;
      break;
    case "audio.stored":
      setAudio(replyView(ev.message_id), ev.url);
      break;
    case "audio.sentence_failed":
      line("meta", `a sentence of the reply could not be spoken (${ev.error})`);
      break;
    case "tool.call":
      line("meta", `${ev.name}…`);
      // This page runs no client tools: say so at once rather than leave the avatar waiting.
      if (ev.kind === "client") send({ type: "tool.result", call_id: ev.call_id, error: "this client runs no tools" });
      break;
    case "tool.done":
      if (ev.status === "error") line("meta", `${ev.name} failed: ${ev.error}`);
      break;
    case "error": {
      const p = line("err", `error ${ev.code}: ${ev.message}`);
      p.dataset.code = ev.code;
      break;
    }
  }
}

function onAudio(buf) {
  // 28-byte header: u8 version, u8 kind, 16-byte message id, u16 sentence, u32 chunk, u32 rate.
  const view = new DataView(buf);
  if (buf.byteLength < 28 || view.getUint8(0) !== 1 || view.getUint8(1) !== 1) return;
  const hex = [...new Uint8Array(buf, 2, 16)].map((b) => b.toString(16).padStart(2, "0")).join("");
  const mid = `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
  const sentence = view.getUint16(18, true);
  const rate = view.getUint32(24, true);
  const r = player.reply(mid);
  if (r.stopped) {
    r.dropped = (r.dropped || 0) + 1; // sent before the server heard the interruption
    return;
  }
  r.connection = state.connection;
  reportLatency(mid);
  player.enqueue(mid, sentence, rate, new Int16Array(buf.slice(28)));
  $("frames").textContent = Number($("frames").textContent) + 1;
}

/** Stop a reply's audio at once and report how much of it was heard. */
function flush(mid) {
  const r = player.replies.get(mid);
  if (!r || r.stopped) return;
  player.stop(mid);
  reportEnd(r);
}

function reportEnd(r) {
  if (r.reportedEnd) return;
  r.reportedEnd = true;
  // Only the connection that sent the audio knows the reply; another would answer unknown_reply.
  if (r.connection === state.connection) {
    send({ type: "playback", message_id: r.mid, played_ms: player.played(r) * 1000, ended: true });
  }
}

setInterval(() => {
  if (!state.live) return;
  for (const r of player.replies.values()) {
    if (r.reportedEnd || r.stopped || r.connection !== state.connection || !player.started(r)) continue;
    if (player.finished(r)) reportEnd(r);
    else send({ type: "playback", message_id: r.mid, played_ms: player.played(r) * 1000, ended: false });
  }
}, REPORT_EVERY_MS);

player.onLevel = (l) => {
  $("peak").textContent = l.maxPeak.toFixed(3);
};

// --- controls --------------------------------------------------------------------------------

$("use-token").onclick = () => {
  const token = $("token").value.trim();
  $("token").value = "";
  if (token) signIn(token);
};
$("token").onkeydown = (e) => {
  if (e.key === "Enter") $("use-token").onclick();
};
$("signout").onclick = () => {
  sessionStorage.removeItem(CONV_KEY);
  state.conversationId = null;
  clearLog();
  signOut();
};

$("conversation").onchange = () => {
  state.conversationId = $("conversation").value || null;
  state.sessionId = null;
  state.lastCursor = null;
  if (state.conversationId) sessionStorage.setItem(CONV_KEY, state.conversationId);
  else sessionStorage.removeItem(CONV_KEY);
  $("connect").textContent = state.conversationId ? "Continue" : "Start";
  clearLog();
  loadHistory().catch((e) => line("err", `history: ${e.message}`));
};

$("connect").onclick = () => {
  player.ensure(); // from the click, so autoplay rules let the reply be heard
  state.wanted = true;
  state.sessionId = null;
  state.lastCursor = null;
  state.attempt = 0;
  controls(false);
  open();
};

$("hangup").onclick = async () => {
  state.wanted = false;
  clearTimeout(state.retryTimer);
  if (!send({ type: "session.end" })) closeSocket(); // ended sessions cannot be resumed
  await stopMic();
  controls(false);
  status("not connected");
};

async function stopMic() {
  await mic.stop();
  $("mic").textContent = "Start microphone";
}

$("mic").onclick = async () => {
  if (mic.on) {
    await stopMic();
    return;
  }
  try {
    await mic.start((frame) => {
      if (!state.live) return;
      state.ws.send(frame);
      sentSamples += frame.byteLength / 2;
      sentLog.push([sentSamples, performance.now()]);
      if (sentLog.length > 15000) sentLog.shift(); // five minutes of 20 ms frames
    });
    $("mic").textContent = "Stop microphone";
  } catch (e) {
    line("err", `microphone: ${e.message}`);
    await stopMic();
  }
};

$("stop").onclick = () => {
  // The reply being heard stops where it stands, so the stored reply keeps only what was heard;
  // without one (between chunks, or nothing played yet) the server goes by the playback reports.
  const r = player.audible();
  if (r && r.connection === state.connection) send({ type: "interrupt", message_id: r.mid, ...player.position(r) });
  else send({ type: "interrupt" });
  for (const other of player.replies.values()) if (!player.finished(other)) flush(other.mid);
};

$("send").onclick = () => {
  const text = $("text").value.trim();
  if (!text || !state.wanted) return;
  const turn = { text, client_seq: state.textSeq++ };
  state.pending.push(turn);
  send({ type: "text", ...turn }); // while reconnecting it goes out after the resume
  $("text").value = "";
};
$("text").onkeydown = (e) => {
  if (e.key === "Enter") $("send").onclick();
};

// --- start -----------------------------------------------------------------------------------

tokenFromUrl();
state.conversationId = sessionStorage.getItem(CONV_KEY);
$("connect").textContent = state.conversationId ? "Continue" : "Start";
const saved = sessionStorage.getItem(TOKEN_KEY);
if (saved) signIn(saved);
else signOut();
