"use strict";
// Tally usage page: figures from the JSON API, signed in with the chat page's token.
// Server data only ever reaches the DOM as text (textContent / text nodes).
(() => {
  const session = window.TallySession;
  const SVG_NS = "http://www.w3.org/2000/svg";
  const DEFAULT_DAYS = 30;
  const MAX_FILLED_DAYS = 400; // longer ranges chart only the days with calls
  const SESSION_LIMIT = 100;
  const CALL_COLUMNS = [
    ["Time", "time"],
    ["Model", "model"],
    ["Input", "num"],
    ["Output", "num"],
    ["Cache write", "num"],
    ["Cache read", "num"],
    ["Web searches", "num"],
    ["Cost", "num"],
    ["", "note"],
  ];
  const $ = (sel) => document.querySelector(sel);
  const fmt = new Intl.NumberFormat("en-US");
  const num = (n) => fmt.format(n ?? 0);
  const dayLabel = new Intl.DateTimeFormat("en-US", {
    month: "short",
    day: "numeric",
    timeZone: "UTC",
  });

  const state = {
    me: null,
    admin: false,
    users: new Set(), // usernames seen in everyone's usage, for the admin's selector
    seq: 0, // the latest load; answers to older ones are dropped
    data: null,
  };

  class SignedOut extends Error {}

  // ---- small DOM helpers -----------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text != null) node.textContent = text;
    return node;
  }

  function svg(tag, attrs = {}, text = null) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
    if (text != null) node.textContent = text;
    return node;
  }

  function row(values, classes = []) {
    const tr = document.createElement("tr");
    values.forEach((value, i) => tr.append(el("td", classes[i] || null, value)));
    return tr;
  }

  function emptyRow(table, columns, text) {
    const tr = document.createElement("tr");
    const td = el("td", "empty", text);
    td.colSpan = columns;
    tr.append(td);
    table.append(tr);
  }

  function setError(message) {
    $("#error").textContent = message || "";
    $("#error").hidden = !message;
  }

  // ---- money: exact decimal strings, added as scaled BigInts, never floats ---

  function parseMoney(text) {
    const [whole, frac = ""] = String(text).split(".");
    return { units: BigInt(whole + frac), places: frac.length };
  }

  // The server's form: no trailing zeros, at least two decimal places.
  function moneyText(units, places) {
    const sign = units < 0n ? "-" : "";
    const digits = (units < 0n ? -units : units).toString().padStart(places + 1, "0");
    const whole = digits.slice(0, digits.length - places);
    const frac = digits.slice(digits.length - places).replace(/0+$/, "");
    return `${sign}${whole}.${frac.padEnd(2, "0")}`;
  }

  function addMoney(a, b) {
    const x = parseMoney(a);
    const y = parseMoney(b);
    const places = Math.max(x.places, y.places);
    const scaled = (m) => m.units * 10n ** BigInt(places - m.places);
    return moneyText(scaled(x) + scaled(y), places);
  }

  function money(amount) {
    return amount == null ? "unpriced" : `$${amount}`;
  }

  // ---- days and time zones ---------------------------------------------------

  function browserZone() {
    return Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
  }

  function todayIn(tz) {
    const parts = new Intl.DateTimeFormat("en-US", {
      timeZone: tz,
      year: "numeric",
      month: "2-digit",
      day: "2-digit",
    }).formatToParts(new Date());
    const part = (type) => parts.find((p) => p.type === type).value;
    return `${part("year")}-${part("month")}-${part("day")}`;
  }

  function addDays(day, count) {
    const date = new Date(`${day}T00:00:00Z`);
    date.setUTCDate(date.getUTCDate() + count);
    return date.toISOString().slice(0, 10);
  }

  function daysBetween(first, last) {
    return Math.round((Date.parse(last) - Date.parse(first)) / 86_400_000);
  }

  // Times arrive in the chosen zone ("2026-03-16T00:30:00+01:00"): shown as given.
  function shortTime(iso, withSeconds = false) {
    return iso ? iso.slice(0, withSeconds ? 19 : 16).replace("T", " ") : "–";
  }

  function fillZones() {
    const here = browserZone();
    const all = Intl.supportedValuesOf ? Intl.supportedValuesOf("timeZone") : [];
    const zones = [...new Set([here, "UTC", ...all])];
    $("#tz").replaceChildren(...zones.map((zone) => new Option(zone, zone)));
    $("#tz").value = here;
  }

  function setDefaultDays() {
    const today = todayIn($("#tz").value);
    $("#until").value = today;
    $("#since").value = addDays(today, 1 - DEFAULT_DAYS);
  }

  // ---- the API -----------------------------------------------------------------

  async function api(path, params = {}) {
    const query = new URLSearchParams();
    for (const [name, value] of Object.entries(params)) {
      if (value !== "" && value != null) query.set(name, value);
    }
    const url = query.toString() ? `${path}?${query}` : path;
    let resp = await get(url);
    if (resp.status === 401 && (await session.refresh())) resp = await get(url);
    const body = await resp.json().catch(() => ({}));
    if (resp.status === 401) throw new SignedOut(body.error || "Please sign in again.");
    if (!resp.ok) throw new Error(body.error || `Request failed (HTTP ${resp.status})`);
    return body;
  }

  async function get(url) {
    const token = await session.fresh();
    return fetch(url, { headers: { Authorization: `Bearer ${token}` } });
  }

  function filters() {
    return {
      since: $("#since").value,
      until: $("#until").value,
      tz: $("#tz").value,
      user: state.admin ? $("#user-select").value : "",
    };
  }

  async function load() {
    const seq = ++state.seq;
    const f = filters();
    $("#loading").hidden = false;
    try {
      const answers = await Promise.all([
        api("/api/me"),
        api("/api/usage/daily", f),
        api("/api/usage/models", f),
        api("/api/usage/savings", f),
        api("/api/usage/sessions", { ...f, limit: SESSION_LIMIT }),
      ]);
      if (seq !== state.seq) return;
      const [me, daily, models, savings, sessions] = answers;
      state.data = { f, daily, models, savings, sessions };
      renderBudget(me.budget);
      learnUsers(f, daily, sessions);
      render();
      setError("");
    } catch (err) {
      if (seq === state.seq) fail(err);
    } finally {
      if (seq === state.seq) $("#loading").hidden = true;
    }
  }

  function fail(err) {
    if (!(err instanceof SignedOut)) return setError(err.message);
    session.clear();
    showSignedOut(err.message);
  }

  // ---- sign-in state -----------------------------------------------------------

  function showSignedOut(message) {
    $("#usage").hidden = true;
    $("#signed-out").hidden = false;
    $("#user").textContent = "";
    if (message) $("#signed-out-text").textContent = message;
  }

  function showMe() {
    const user = state.me.user;
    state.admin = user.role === "admin";
    $("#user").textContent = state.admin ? `${user.username} (admin)` : user.username;
    $("#user-filter").hidden = !state.admin;
    $("#sessions").classList.toggle("show-who", state.admin);
    if (state.admin) state.users.add(user.username);
    renderBudget(state.me.budget);
    $("#signed-out").hidden = true;
    $("#usage").hidden = false;
  }

  function renderBudget(budget) {
    $("#budget-day").textContent = budgetLine("Today", budget, "daily");
    $("#budget-month").textContent = budgetLine("This month", budget, "monthly");
    $("#budget-day").classList.toggle("over", budget.daily_left === "0.00");
    $("#budget-month").classList.toggle("over", budget.monthly_left === "0.00");
  }

  function budgetLine(label, budget, period) {
    const spent = money(budget[`${period}_spent`]);
    const limit = budget[`${period}_limit`];
    if (limit == null) return `${label}: ${spent} spent · no limit`;
    const left = money(budget[`${period}_left`]);
    return `${label}: ${left} left of ${money(limit)} · ${spent} spent`;
  }

  // The admin's selector lists whoever appears in everyone's usage, and the admin.
  function learnUsers(f, daily, sessions) {
    if (!state.admin || f.user) return;
    for (const day of daily.days) state.users.add(day.username);
    for (const s of sessions.sessions) state.users.add(s.username);
    const select = $("#user-select");
    const chosen = select.value;
    const names = [...state.users].sort();
    select.replaceChildren(
      new Option("All users", ""),
      ...names.map((name) => new Option(name, name)),
    );
    select.value = chosen;
  }

  // ---- rendering ---------------------------------------------------------------

  function render() {
    const { f, daily, models, savings, sessions } = state.data;
    renderCards(daily.totals, savings.totals);
    renderChart(daily.days, f);
    renderModels(models);
    renderSavings(savings);
    renderSessions(sessions.sessions);
  }

  function tokens(t) {
    return (
      t.input_tokens + t.output_tokens + t.cache_creation_tokens + t.cache_read_tokens
    );
  }

  function callCount(t) {
    const unpriced = t.unpriced_calls ? ` (${num(t.unpriced_calls)} unpriced)` : "";
    return `${num(t.calls)}${unpriced}`;
  }

  function renderCards(totals, saved) {
    $("#total-cost").textContent = money(totals.cost);
    const calls = `${num(totals.calls)} ${totals.calls === 1 ? "call" : "calls"}`;
    const unpriced = totals.unpriced_calls
      ? ` (${num(totals.unpriced_calls)} unpriced)`
      : "";
    $("#total-calls").textContent =
      `${calls}${unpriced} · ${num(tokens(totals))} tokens`;
    $("#total-saved").textContent = money(saved.saved);
    $("#saved-sub").textContent = `${num(saved.cache_read_tokens)} cache read tokens`;
  }

  function renderModels(body) {
    const rows = body.models.map((m) => {
      const tr = modelRow(m.model, m);
      tr.dataset.model = m.model;
      return tr;
    });
    $("#models tbody").replaceChildren(...rows);
    $("#models tfoot").replaceChildren(modelRow("Total", body.totals));
    $("#models tfoot").hidden = !rows.length;
    if (!rows.length) emptyRow($("#models tbody"), 8, "No calls in these days.");
  }

  function modelRow(name, t) {
    const values = [
      name,
      callCount(t),
      num(t.input_tokens),
      num(t.output_tokens),
      num(t.cache_creation_tokens),
      num(t.cache_read_tokens),
      num(t.web_search_requests),
      money(t.cost),
    ];
    return row(values, ["model", ...Array(7).fill("num")]);
  }

  function renderSavings(body) {
    const rows = body.models.map((m) => {
      const tr = savingRow(m.model, m);
      tr.dataset.model = m.model;
      return tr;
    });
    $("#savings tbody").replaceChildren(...rows);
    $("#savings tfoot").replaceChildren(savingRow("Total", body.totals));
    $("#savings tfoot").hidden = !rows.length;
    if (!rows.length) emptyRow($("#savings tbody"), 4, "No cache reads in these days.");
  }

  function savingRow(name, t) {
    const values = [name, callCount(t), num(t.cache_read_tokens), money(t.saved)];
    return row(values, ["model", "num", "num", "num"]);
  }

  // ---- sessions ----------------------------------------------------------------

  function renderSessions(sessions) {
    const body = $("#sessions tbody");
    body.replaceChildren(...sessions.map(sessionRow));
    if (!sessions.length) emptyRow(body, 7, "No sessions in these days.");
    const note = $("#sessions-note");
    note.hidden = sessions.length < SESSION_LIMIT;
    note.textContent = `The ${SESSION_LIMIT} most recently used sessions.`;
  }

  function sessionRow(s) {
    const tr = row(
      [
        "",
        s.username,
        shortTime(s.first_at),
        shortTime(s.last_at),
        callCount(s),
        num(tokens(s)),
        money(s.cost),
      ],
      ["id", "who", "time", "time", "num", "num", "num"],
    );
    tr.className = "session";
    tr.dataset.sessionId = s.session_id;
    const open = el("button", "link", s.session_id);
    open.type = "button";
    open.title = s.session_id;
    open.setAttribute("aria-expanded", "false");
    tr.firstChild.append(open);
    tr.addEventListener("click", () => toggleSession(tr, open));
    return tr;
  }

  function toggleSession(tr, button) {
    const next = tr.nextElementSibling;
    if (next?.classList.contains("detail")) {
      next.remove();
      button.setAttribute("aria-expanded", "false");
      return;
    }
    const cell = el("td", null, "loading…");
    cell.colSpan = 7;
    const detail = el("tr", "detail");
    detail.dataset.sessionId = tr.dataset.sessionId;
    detail.append(cell);
    tr.after(detail);
    button.setAttribute("aria-expanded", "true");
    showSession(tr.dataset.sessionId, cell);
  }

  async function showSession(sessionId, cell) {
    const { tz, user } = state.data.f;
    try {
      const path = `/api/usage/sessions/${encodeURIComponent(sessionId)}`;
      const body = await api(path, { tz, user });
      cell.replaceChildren(callsTable(body.calls));
    } catch (err) {
      cell.textContent = err.message;
      if (err instanceof SignedOut) fail(err);
    }
  }

  function callsTable(calls) {
    const head = document.createElement("tr");
    for (const [name, className] of CALL_COLUMNS) {
      head.append(el("th", className, name));
    }
    const table = el("table", "calls");
    table.append(el("thead"), el("tbody"));
    table.tHead.append(head);
    table.tBodies[0].append(...calls.map(callRow));
    return table;
  }

  function callRow(call) {
    const notes = [];
    if (call.partial) notes.push("partial");
    if (call.source !== "chat") notes.push(call.source);
    const tr = row(
      [
        shortTime(call.occurred_at, true),
        call.model,
        num(call.input_tokens),
        num(call.output_tokens),
        num(call.cache_creation_tokens),
        num(call.cache_read_tokens),
        num(call.web_search_requests),
        money(call.cost),
        notes.join(", "),
      ],
      CALL_COLUMNS.map(([, className]) => className),
    );
    tr.dataset.messageId = call.message_id;
    tr.title = call.message_id;
    return tr;
  }

  // ---- the chart: one bar per day, drawn as inline SVG -------------------------

  function dayTotals(rows) {
    const days = new Map();
    for (const r of rows) {
      const d = days.get(r.day) ?? { day: r.day, cost: "0.00", calls: 0, users: [] };
      d.cost = addMoney(d.cost, r.cost);
      d.calls += r.calls;
      d.users.push([r.username, r.cost]);
      days.set(r.day, d);
    }
    return days;
  }

  function chartDays(rows, f) {
    const days = dayTotals(rows);
    const known = [...days.keys()].sort();
    const first = f.since || known[0];
    const last = f.until || known.at(-1);
    if (!first || !last) return [];
    if (daysBetween(first, last) >= MAX_FILLED_DAYS) {
      return known.map((d) => days.get(d));
    }
    const out = [];
    for (let day = first; day <= last; day = addDays(day, 1)) {
      out.push(days.get(day) ?? { day, cost: "0.00", calls: 0, users: [] });
    }
    return out;
  }

  // A round step for about four grid lines; geometry only, labels stay exact.
  function scale(max) {
    const raw = max / 4;
    const magnitude = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 2.5, 5, 10].find((n) => n * magnitude >= raw) * magnitude;
    return { step, ticks: Math.ceil(max / step) };
  }

  // Every tick gets as many decimal places as the step needs: $0.025, $0.050.
  function tickPlaces(step) {
    const frac = step.toFixed(8).split(".")[1].replace(/0+$/, "");
    return Math.max(2, frac.length);
  }

  function tooltip(d) {
    const calls = `${num(d.calls)} ${d.calls === 1 ? "call" : "calls"}`;
    const lines = [`${d.day}: ${money(d.cost)} · ${calls}`];
    if (d.users.length > 1 || state.admin) {
      for (const [name, cost] of d.users) lines.push(`${name}: ${money(cost)}`);
    }
    return lines.join("\n");
  }

  function renderChart(rows, f) {
    const box = $("#chart");
    const days = chartDays(rows, f);
    if (!days.some((d) => d.calls > 0)) {
      box.replaceChildren(el("p", "empty", "No usage in these days."));
      return;
    }
    box.replaceChildren(drawChart(days, Math.max(box.clientWidth, 320)));
  }

  function drawChart(days, width) {
    const height = 260;
    const pad = { top: 16, right: 12, bottom: 34, left: 72 };
    const plot = { w: width - pad.left - pad.right, h: height - pad.top - pad.bottom };
    const max = Math.max(...days.map((d) => Number(d.cost)));
    const { step, ticks } = scale(max > 0 ? max : 0.01);
    const top = step * ticks;
    const places = tickPlaces(step);
    const chart = svg("svg", {
      class: "bars",
      width,
      height,
      viewBox: `0 0 ${width} ${height}`,
      role: "img",
      "aria-label": "Cost per day",
    });
    const y = (value) => pad.top + plot.h - (value / top) * plot.h;
    for (let i = 0; i <= ticks; i++) {
      const at = y(i * step);
      const line = { x1: pad.left, x2: width - pad.right, y1: at, y2: at };
      const label = { class: "tick y", x: pad.left - 8, y: at + 4 };
      chart.append(
        svg("line", { class: i ? "grid" : "axis", ...line }),
        svg("text", label, `$${(i * step).toFixed(places)}`),
      );
    }
    const band = plot.w / days.length;
    days.forEach((d, i) => chart.append(dayBar(d, pad.left + i * band, band, plot, y)));
    chart.append(...dayLabels(days, pad, band, height));
    return chart;
  }

  function dayBar(d, left, band, plot, y) {
    const group = svg("g", { class: "day" });
    const column = { x: left, y: y(0) - plot.h, width: band, height: plot.h };
    const hit = svg("rect", { class: "hit", ...column });
    hit.append(svg("title", {}, tooltip(d)));
    const cost = Number(d.cost);
    // A bar too small to see still gets two pixels: a cost is never drawn as none.
    const h = cost > 0 ? Math.max(2, y(0) - y(cost)) : 0;
    const w = Math.max(1, Math.min(48, band * 0.7));
    const bar = svg("rect", {
      class: "bar",
      x: left + (band - w) / 2,
      y: y(0) - h,
      width: w,
      height: h,
      rx: Math.min(3, w / 4),
      "data-day": d.day,
      "data-cost": d.cost,
      "data-calls": d.calls,
    });
    bar.append(svg("title", {}, tooltip(d)));
    group.append(hit, bar);
    if (cost > 0 && band >= 72) {
      const at = { class: "value", x: left + band / 2, y: y(0) - h - 5 };
      group.append(svg("text", at, money(d.cost)));
    }
    return group;
  }

  function dayLabels(days, pad, band, height) {
    const fits = Math.max(1, Math.floor((band * days.length) / 64));
    const every = Math.ceil(days.length / fits);
    const labels = [];
    days.forEach((d, i) => {
      // Counted back from the last day: the most recent day always has a label.
      if ((days.length - 1 - i) % every) return;
      const x = pad.left + i * band + band / 2;
      const text = dayLabel.format(new Date(`${d.day}T00:00:00Z`));
      const at = { class: "tick x", x, y: height - pad.bottom + 18 };
      labels.push(svg("text", at, text));
    });
    return labels;
  }

  // ---- start -------------------------------------------------------------------

  function redrawChart() {
    if (state.data) renderChart(state.data.daily.days, state.data.f);
  }

  async function init() {
    if (!(await session.fresh())) return showSignedOut();
    session.schedule();
    fillZones();
    setDefaultDays();
    try {
      state.me = await api("/api/me");
    } catch (err) {
      return fail(err);
    }
    showMe();
    $("#filters").addEventListener("submit", (ev) => {
      ev.preventDefault();
      load();
    });
    for (const id of ["#since", "#until", "#tz", "#user-select"]) {
      $(id).addEventListener("change", load);
    }
    let pending = 0;
    window.addEventListener("resize", () => {
      cancelAnimationFrame(pending);
      pending = requestAnimationFrame(redrawChart);
    });
    await load();
  }

  init();
})();
