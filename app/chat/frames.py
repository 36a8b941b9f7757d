"""Frames to the browser, with a reply's text deltas merged into fewer frames.

Claude sends a reply in many small deltas. A websocket frame per delta costs the
web process as much CPU as reading the delta did, and the page cannot paint faster
than about 60 times a second anyway. So text (and thinking) deltas that arrive
within ``interval`` of the last text frame are held and sent together: the first
delta goes out at once, later ones at most ``interval`` apart. Held text is sent
before any other frame, so the order the page sees never changes, and a
process-wide flusher thread sends what is held when the stream goes quiet.
"""

import json
import logging
import threading
import time

log = logging.getLogger(__name__)


class FrameSender:
    """Sends one socket's frames; merges text deltas ``interval`` seconds apart."""

    def __init__(self, ws, interval, flusher=None):
        self.ws = ws
        self.interval = interval
        self.flusher = flusher
        self._lock = threading.Lock()
        self._held = []
        self._held_kind = None
        self._text_sent_at = float("-inf")

    def send(self, kind, **fields):
        """Send a frame now, after any text held before it."""
        with self._lock:
            self._flush()
            self.ws.send(json.dumps({"type": kind, **fields}))

    def text(self, kind, text):
        """A ``text`` or ``thinking`` delta: sent now, or held for a moment."""
        with self._lock:
            if self._held_kind not in (None, kind):
                self._flush()
            self._held.append(text)
            self._held_kind = kind
            if time.monotonic() - self._text_sent_at >= self.interval:
                self._flush()
            elif len(self._held) == 1 and self.flusher is not None:
                self.flusher.hold(self)

    def flush(self):
        """Send the held text, if any (the flusher's thread calls this)."""
        with self._lock:
            self._flush()

    def _flush(self):
        if not self._held:
            return
        text = "".join(self._held)
        kind = self._held_kind
        self._held.clear()
        self._held_kind = None
        self._text_sent_at = time.monotonic()
        self.ws.send(json.dumps({"type": kind, "text": text}))


class Flusher:
    """One thread per process that sends text held longer than ``interval``."""

    def __init__(self, interval):
        self.interval = interval
        self._held = set()
        self._ready = threading.Condition()
        self._thread = None

    def hold(self, sender):
        with self._ready:
            self._held.add(sender)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="frame-flusher", daemon=True
                )
                self._thread.start()
            self._ready.notify()

    def _run(self):
        while True:
            with self._ready:
                self._ready.wait_for(lambda: self._held)
            # Whatever is held now was held after its socket's last text frame:
            # one interval from now it is due.
            time.sleep(self.interval)
            with self._ready:
                due, self._held = self._held, set()
            for sender in due:
                try:
                    sender.flush()
                except Exception as exc:  # a closed socket: its chat notices
                    log.debug("held text not sent: %s", exc)
