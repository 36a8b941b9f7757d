// Tally sign-in state, shared by the chat and usage pages. The access token is
// short-lived; before it runs out, the refresh token buys a new one, so an open
// page keeps working for as long as the refresh token lasts.
"use strict";

window.TallySession = (() => {
  const ACCESS = "tally.token";
  const REFRESH = "tally.refresh";
  const RETRY_MS = 10_000;
  const renewed = [];
  let timer = 0;
  let inFlight = null;

  function claims(token) {
    try {
      const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return JSON.parse(atob(part));
    } catch {
      return {};
    }
  }

  function msLeft(token) {
    const exp = claims(token).exp;
    return typeof exp === "number" ? exp * 1000 - Date.now() : Infinity;
  }

  function access() {
    return sessionStorage.getItem(ACCESS);
  }

  // After sign-in: keep both tokens and plan the first renewal.
  function store(answer) {
    sessionStorage.setItem(ACCESS, answer.access_token);
    if (answer.refresh_token) sessionStorage.setItem(REFRESH, answer.refresh_token);
    schedule();
  }

  function clear() {
    clearTimeout(timer);
    sessionStorage.removeItem(ACCESS);
    sessionStorage.removeItem(REFRESH);
  }

  // Renew once four fifths of what is left of the token's life has passed.
  function schedule() {
    clearTimeout(timer);
    const token = access();
    if (!token || !sessionStorage.getItem(REFRESH)) return;
    const left = msLeft(token);
    if (left === Infinity) return;
    timer = setTimeout(refresh, Math.max(1000, left * 0.8));
  }

  // A new access token, or null when the refresh token is no longer accepted.
  function refresh() {
    inFlight = inFlight || renew().finally(() => (inFlight = null));
    return inFlight;
  }

  async function renew() {
    const token = sessionStorage.getItem(REFRESH);
    if (!token) return null;
    let resp;
    try {
      resp = await fetch("/api/auth/refresh", {
        method: "POST",
        headers: { Authorization: `Bearer ${token}` },
      });
    } catch {
      clearTimeout(timer);
      timer = setTimeout(refresh, RETRY_MS); // the network blinked: try again
      return null;
    }
    if (!resp.ok) return null; // signed out elsewhere or expired: sign in again
    const answer = await resp.json();
    sessionStorage.setItem(ACCESS, answer.access_token);
    schedule();
    for (const listener of renewed) listener(answer.access_token);
    return answer.access_token;
  }

  // An access token good for at least a few more seconds, renewed if need be.
  async function fresh() {
    const token = access();
    if (token && msLeft(token) > 5000) return token;
    return (await refresh()) || null;
  }

  // Revoke the tokens on the server too, not only forget them here.
  async function signOut() {
    const token = access();
    clear();
    if (!token) return;
    await fetch("/api/auth/logout", {
      method: "POST",
      headers: { Authorization: `Bearer ${token}` },
    }).catch(() => {});
  }

  return {
    access,
    store,
    clear,
    schedule,
    refresh,
    fresh,
    signOut,
    onRenewed: (listener) => renewed.push(listener),
  };
})();
