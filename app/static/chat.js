"use strict";
// Tally chat page: signs in, speaks the /ws/chat protocol and shows exact usage.
// Server data only ever reaches the DOM as text (textContent / text nodes).
(() => {
  const session = window.TallySession;
  const CHAT_KEY = "tally.chat"; // the open conversation, reopened after a reload
  const CLOSE_REASONS = {
    1001: "disconnected: Tally is restarting",
    1009: "disconnected: the last message was too large",
  };
  const SAVE_TEXT = {
    saved: "saved ✓",
    pending: "pending…",
    dead_letter: "not saved (dead letter)",
  };
  const $ = (sel) => document.querySelector(sel);
  const fmt = new Intl.NumberFormat("en-US");
  const num = (n) => fmt.format(n ?? 0);

  const state = {
    ws: null,
    connecting: false,
    ready: false,
    streaming: false,
    sessionId: null,
    current: null, // the assistant turn receiving text/thinking deltas
    turns: new Map(), // message_id -> turn, for late usage_saved/usage_status
    contextWindow: 200000,
    sessionCost: null,
    authMessage: null,
    maxBytes: null, // the server's max_message_bytes, from the ready frame
  };

  // ---- small DOM helpers -----------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text != null) node.textContent = text;
    return node;
  }

  function setError(message) {
    $("#error").textContent = message || "";
    $("#error").hidden = !message;
  }

  function setStatus(text, canReconnect = false) {
    $("#status-text").textContent = text || "";
    $("#status").hidden = !text;
    $("#reconnect").hidden = !canReconnect;
  }

  function updateControls() {
    $("#send").disabled = !state.ready || state.streaming;
    $("#new-chat").disabled = state.streaming;
    $("#history").disabled = state.streaming;
  }

  function scrollToEnd() {
    const t = $("#transcript");
    t.scrollTop = t.scrollHeight;
  }

  // ---- money: decimal strings from the server, never floats ------------------

  function money(amount) {
    if (amount == null) return "unpriced";
    const [whole, frac = ""] = String(amount).split(".");
    return `$${whole}.${frac.replace(/0+$/, "").padEnd(2, "0")}`;
  }

  function decimalGreater(a, b) {
    const re = /^\d+(\.\d+)?$/;
    if (!re.test(a) || !re.test(b)) return true; // unexpected shape: show as given
    const [ai, af = ""] = a.split(".");
    const [bi, bf = ""] = b.split(".");
    const width = Math.max(af.length, bf.length);
    return BigInt(ai + af.padEnd(width, "0")) > BigInt(bi + bf.padEnd(width, "0"));
  }

  // end and usage_saved both carry a session total and may arrive out of order;
  // the total only grows, so an older, smaller figure must not overwrite it.
  function setSessionCost(amount) {
    if (amount == null) return;
    if (state.sessionCost != null && !decimalGreater(amount, state.sessionCost)) return;
    state.sessionCost = amount;
    $("#session-cost").textContent = `Session: ${money(amount)}`;
  }

  function resetSessionCost() {
    state.sessionCost = null;
    $("#session-cost").textContent = "Session: $0.00";
  }

  // ---- context bar -----------------------------------------------------------

  function renderContext(tokens, used, size) {
    const bar = $("#context-bar");
    const pct = Math.min(Math.max(used, 0), 1) * 100;
    bar.dataset.used = String(used);
    bar.setAttribute("aria-valuenow", String(used));
    bar.classList.toggle("warn", used >= 0.8);
    bar.querySelector(".fill").style.width = `${pct}%`;
    const label = `${num(tokens)} / ${num(size)} tokens (${(used * 100).toFixed(1)} %)`;
    $("#context-label").textContent = label;
  }

  // ---- transcript ------------------------------------------------------------

  function addUserBubble(text) {
    $("#transcript").append(el("div", "msg user", text));
    scrollToEnd();
  }

  function addErrorBubble(message) {
    $("#transcript").append(el("div", "msg error", message));
    scrollToEnd();
  }

  function newTurn(messageId) {
    const node = el("div", "msg assistant");
    const thinking = el("details", "thinking");
    thinking.hidden = true;
    thinking.append(el("summary", null, "thinking"), el("div", "thinking-text"));
    const body = el("div", "body");
    const line = el("div", "usage-line");
    node.append(thinking, body, line);
    if (messageId) node.dataset.messageId = messageId;
    $("#transcript").append(node);

    const turn = { node, thinking, body, line, usage: null, save: null };
    turn.text = body.appendChild(document.createTextNode(""));
    turn.thought = thinking.lastChild.appendChild(document.createTextNode(""));
    if (messageId) state.turns.set(messageId, turn);
    return turn;
  }

  function currentTurn() {
    state.current ??= newTurn(null);
    return state.current;
  }

  function turnFor(messageId) {
    return state.turns.get(messageId) ?? currentTurn();
  }

  function renderUsage(turn) {
    const u = turn.usage;
    const parts = [];
    if (u) {
      parts.push(`in ${num(u.input_tokens)}`, `out ${num(u.output_tokens)}`);
      parts.push(`cache write ${num(u.cache_creation_tokens)}`);
      parts.push(`cache read ${num(u.cache_read_tokens)}`);
      if (u.thinking_tokens != null) parts.push(`thinking ${num(u.thinking_tokens)}`);
    }
    if (turn.costKnown) parts.push(money(turn.cost));
    turn.line.replaceChildren(parts.join(" · "));
    if (!turn.save) return;
    if (parts.length) turn.line.append(" · ");
    turn.line.append(el("span", "save-mark", SAVE_TEXT[turn.save] ?? turn.save));
  }

  // A save status never goes back once the worker has confirmed the record.
  function setSave(turn, status) {
    if (turn.save !== "saved") turn.save = status;
  }

  function finishReply(note) {
    if (note && state.current) state.current.node.append(el("div", "note", note));
    state.current = null;
    state.streaming = false;
    updateControls();
  }

  // ---- server frames ---------------------------------------------------------

  const handlers = {
    ready(f) {
      const first = !state.ready && !$("#transcript").hasChildNodes();
      state.ready = true;
      state.authMessage = null;
      state.contextWindow = f.context_window ?? state.contextWindow;
      state.maxBytes = f.limits?.max_message_bytes ?? null;
      $("#user").textContent = f.user?.username ?? "";
      if (f.model) $("#model").textContent = f.model;
      if (f.simulated != null) $("#sim-notice").hidden = !f.simulated;
      showChat();
      setStatus("");
      updateControls();
      loadHistory();
      const open = sessionStorage.getItem(CHAT_KEY);
      if (first && open) openChat(open);
    },
    start(f) {
      state.current = newTurn(f.message_id);
      if (f.model) $("#model").textContent = f.model;
    },
    text(f) {
      currentTurn().text.appendData(f.text);
      scrollToEnd();
    },
    thinking(f) {
      const turn = currentTurn();
      turn.thinking.hidden = false;
      turn.thought.appendData(f.text);
    },
    token_update(f) {
      const turn = turnFor(f.message_id);
      turn.usage = f;
      renderUsage(turn);
      const size = f.context_window ?? state.contextWindow;
      renderContext(f.total_tokens, f.context_used ?? 0, size);
    },
    end(f) {
      const turn = turnFor(f.message_id);
      turn.usage = f.usage ?? turn.usage;
      Object.assign(turn, { cost: f.cost, costKnown: true });
      setSave(turn, f.saved ? "saved" : "pending");
      renderUsage(turn);
      setSessionCost(f.session_cost);
      finishReply();
      loadHistory();
    },
    usage_saved(f) {
      const turn = state.turns.get(f.message_id);
      if (!turn) return; // belongs to a chat cleared by "New chat"
      Object.assign(turn, { cost: f.cost, costKnown: true });
      setSave(turn, "saved");
      renderUsage(turn);
      setSessionCost(f.session?.cost);
      loadHistory(); // the list's cost of this chat now counts the call
    },
    usage_status(f) {
      const turn = state.turns.get(f.message_id);
      if (!turn) return;
      setSave(turn, f.status);
      renderUsage(turn);
    },
    error(f) {
      const message = f.message || f.code || "Unknown error";
      setError(message);
      // The server closes with 4401 next; onClose shows the sign-in form.
      if (f.code === "unauthorized") state.authMessage = message;
      else addErrorBubble(message);
      if (state.streaming) finishReply();
    },
  };

  function onFrame(frame) {
    if (typeof frame.session_id === "string") {
      state.sessionId = frame.session_id;
      sessionStorage.setItem(CHAT_KEY, frame.session_id);
    }
    const handle = handlers[frame.type];
    if (handle) handle(frame);
  }

  // ---- websocket -------------------------------------------------------------

  async function connect() {
    // A double click on Reconnect must not open two sockets.
    if (state.ws || state.connecting) return;
    state.connecting = true;
    const token = await session.fresh().finally(() => (state.connecting = false));
    if (!token) return showLogin();
    session.schedule();
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/ws/chat`);
    state.ws = ws;
    setStatus("connecting…");
    // The token travels in the first frame, never in the URL (URLs end up in logs).
    ws.onopen = () => ws.send(JSON.stringify({ type: "auth", token }));
    ws.onmessage = (ev) => ws === state.ws && onFrame(JSON.parse(ev.data));
    ws.onclose = (ev) => ws === state.ws && onClose(ev);
  }

  function onClose(ev) {
    state.ws = null;
    state.ready = false;
    if (state.streaming) finishReply("(reply interrupted)");
    updateControls();
    if (ev.code !== 4401) return setStatus(CLOSE_REASONS[ev.code] ?? "disconnected", true);
    session.clear();
    showLogin(state.authMessage || "Please sign in again.");
    state.authMessage = null;
  }

  // Dropping state.ws first makes the old socket's close handler a no-op.
  function disconnect() {
    const ws = state.ws;
    state.ws = null;
    state.ready = false;
    if (state.streaming) finishReply("(reply interrupted)");
    if (ws) ws.close(1000);
  }

  function sendChat(text) {
    const frame = { type: "chat", text, session_id: state.sessionId };
    state.ws.send(JSON.stringify(frame));
    addUserBubble(text);
    state.current = null;
    state.streaming = true;
    setError("");
    updateControls();
  }

  // ---- sign-in ---------------------------------------------------------------

  function showLogin(message) {
    $("#chat").hidden = true;
    $("#account").hidden = true;
    setStatus("");
    $("#login-form").hidden = false;
    setError(message || "");
  }

  function showChat() {
    $("#login-form").hidden = true;
    $("#chat").hidden = false;
    $("#account").hidden = false;
  }

  async function requestToken(username) {
    // Development signs in by name alone; elsewhere with a password.
    const password = $("#password");
    const url = password ? "/api/auth/login" : "/api/auth/dev-login";
    const body = password ? { username, password: password.value } : { username };
    const resp = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const data = await resp.json().catch(() => ({}));
    if (!resp.ok) throw new Error(data.error || `Sign in failed (HTTP ${resp.status})`);
    return data;
  }

  async function onLogin(ev) {
    ev.preventDefault();
    $("#login-button").disabled = true;
    try {
      session.store(await requestToken($("#username").value.trim()));
      setError("");
      connect();
    } catch (err) {
      setError(err.message);
    } finally {
      $("#login-button").disabled = false;
    }
  }

  // ---- earlier chats ---------------------------------------------------------

  async function api(path) {
    const token = await session.fresh();
    const resp = await fetch(path, { headers: { Authorization: `Bearer ${token}` } });
    const body = await resp.json().catch(() => ({}));
    const failure = new Error(body.error || `HTTP ${resp.status}`);
    if (!resp.ok) throw Object.assign(failure, { status: resp.status });
    return body;
  }

  async function loadHistory() {
    let chats;
    try {
      ({ chats } = await api("/api/chats"));
    } catch {
      return; // the list is a convenience: the chat works without it
    }
    const select = $("#history");
    const options = chats.map((c) => {
      const when = new Date(c.last_at).toLocaleString();
      const option = el("option", null, `${c.title} · ${when} · ${money(c.cost)}`);
      option.value = c.id;
      return option;
    });
    select.replaceChildren(select.options[0], ...options);
    select.value = state.sessionId ?? "";
  }

  // Show a past conversation as it streamed; the next message continues it.
  async function openChat(id) {
    let found;
    try {
      found = await api(`/api/chats/${encodeURIComponent(id)}`);
    } catch (err) {
      if (err.status === 404) sessionStorage.removeItem(CHAT_KEY);
      else setError(`Could not open the chat: ${err.message}`);
      return;
    }
    newChat();
    state.sessionId = found.chat.id;
    sessionStorage.setItem(CHAT_KEY, found.chat.id);
    $("#history").value = found.chat.id;
    let last = null;
    for (const t of found.turns) {
      if (t.role === "user") {
        addUserBubble(t.text);
        continue;
      }
      const turn = newTurn(t.message_id);
      turn.text.appendData(t.text);
      if (t.usage) {
        Object.assign(turn, { usage: t.usage, cost: t.usage.cost, costKnown: true });
        last = t.usage;
      }
      turn.save = t.usage ? "saved" : "pending";
      renderUsage(turn);
    }
    setSessionCost(found.chat.cost);
    if (last) {
      const total = last.input_tokens + last.cache_creation_tokens
        + last.cache_read_tokens + last.output_tokens;
      renderContext(total, total / state.contextWindow, state.contextWindow);
    }
  }

  function onPickChat() {
    const id = $("#history").value;
    if (!id) return newChat();
    if (id !== state.sessionId) openChat(id);
  }

  // ---- chat controls ---------------------------------------------------------

  function onSend(ev) {
    ev.preventDefault();
    const text = $("#message").value;
    if (!text.trim() || $("#send").disabled || !state.ws) return;
    const size = new TextEncoder().encode(text).length;
    if (state.maxBytes && size > state.maxBytes) {
      return setError(`The message is ${num(size)} bytes; the limit is ${num(state.maxBytes)}.`);
    }
    sendChat(text);
    $("#message").value = "";
  }

  function onKey(ev) {
    // isComposing: Enter that confirms an IME candidate must not send.
    if (ev.key !== "Enter" || ev.shiftKey || ev.isComposing) return;
    ev.preventDefault();
    $("#chat-form").requestSubmit();
  }

  function newChat() {
    sessionStorage.removeItem(CHAT_KEY);
    $("#history").value = "";
    state.sessionId = null;
    state.current = null;
    state.turns.clear();
    $("#transcript").replaceChildren();
    resetSessionCost();
    renderContext(0, 0, state.contextWindow);
    setError("");
  }

  function signOut() {
    disconnect();
    session.signOut();
    $("#history").replaceChildren($("#history").options[0]);
    newChat();
    showLogin();
  }

  function init() {
    $("#login-form").addEventListener("submit", onLogin);
    $("#chat-form").addEventListener("submit", onSend);
    $("#message").addEventListener("keydown", onKey);
    $("#new-chat").addEventListener("click", newChat);
    $("#history").addEventListener("change", onPickChat);
    $("#sign-out").addEventListener("click", signOut);
    $("#reconnect").addEventListener("click", connect);
    // A renewed token goes to the open socket, which then stays open past the
    // old token's expiry.
    session.onRenewed((token) => {
      if (state.ws && state.ready) state.ws.send(JSON.stringify({ type: "auth", token }));
    });
    connect();
  }

  init();
})();
