// breakglass console: the SSH player (xterm.js), the statement timeline search and its live view.
// Recorded bytes are only ever written to the terminal emulator, never to the DOM as HTML.
"use strict";

(function () {
  function fmt(t) {
    t = Math.max(0, t);
    const m = Math.floor(t / 60), s = Math.floor(t % 60);
    return m + ":" + (s < 10 ? "0" : "") + s;
  }

  function decode(b64) {
    const bin = atob(b64);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  function startPlayer(section) {
    const url = section.getAttribute("data-cast");
    const playBtn = document.getElementById("play");
    const seek = document.getElementById("seek");
    const clock = document.getElementById("clock");
    const speedSel = document.getElementById("speed");
    const showInput = document.getElementById("show-input");
    const markersEl = document.getElementById("markers");
    fetch(url, { credentials: "same-origin" })
      .then((r) => r.json())
      .then((cast) => {
        if (cast.error) {
          clock.textContent = cast.error;
          return;
        }
        const term = new Terminal({
          cols: cast.cols, rows: cast.rows, disableStdin: true, convertEol: false,
          scrollback: 5000, allowProposedApi: false,
        });
        term.open(document.getElementById("terminal"));
        // hyperlinks in recordings are not followed
        const frame = (f) => ({ t: f[0], k: f[1], d: decode(f[2]), cols: f[3], rows: f[4] });
        const frames = cast.frames.map(frame);
        const duration = cast.duration;
        seek.max = String(duration);
        let pos = 0, now = 0, playing = false, timer = null, baseWall = 0, baseT = 0;
        let speed = 1;

        // the terminal has the recorded size, and follows the recorded resizes (in order
        // with the output: xterm.js writes asynchronously)
        function resize(cols, rows) {
          term.write(new Uint8Array(0), () => {
            term.resize(cols, rows);
            section.setAttribute("data-size", cols + "x" + rows);
          });
        }
        function show(f) {
          if (f.k === "i" && !showInput.checked) return;
          if (f.k === "r" && f.cols) resize(f.cols, f.rows);
          term.write(f.d);
        }
        function update() {
          clock.textContent = fmt(now) + " / " + fmt(duration);
          seek.value = String(now);
          section.setAttribute("data-position", now.toFixed(3));
          section.setAttribute("data-state", playing ? "playing" : (pos >= frames.length ? "ended" : "paused"));
        }
        function advanceTo(t) {
          while (pos < frames.length && frames[pos].t <= t) show(frames[pos++]);
          now = Math.min(t, duration);
        }
        function seekTo(t) {
          term.reset();
          resize(cast.cols, cast.rows);
          pos = 0;
          advanceTo(t);
          if (playing) { baseWall = performance.now(); baseT = now; }
          update();
        }
        function tick() {
          const t = baseT + ((performance.now() - baseWall) / 1000) * speed;
          advanceTo(t);
          if (pos >= frames.length) { now = duration; pause(); return; }
          update();
        }
        function play() {
          if (pos >= frames.length) seekTo(0);
          playing = true;
          baseWall = performance.now();
          baseT = now;
          playBtn.textContent = "Pause";
          timer = setInterval(tick, 50);
          update();
        }
        function pause() {
          playing = false;
          if (timer) clearInterval(timer);
          timer = null;
          playBtn.textContent = "Play";
          update();
        }
        playBtn.addEventListener("click", () => (playing ? pause() : play()));
        seek.addEventListener("input", () => seekTo(parseFloat(seek.value)));
        speedSel.addEventListener("change", () => {
          speed = parseFloat(speedSel.value) || 1;
          baseWall = performance.now();
          baseT = now;
        });
        showInput.addEventListener("change", () => seekTo(now));
        for (const m of cast.markers) {
          const li = document.createElement("li");
          const b = document.createElement("button");
          b.type = "button";
          b.className = "marker " + m.kind;
          b.textContent = fmt(m.t) + "  " + m.label; // text, never HTML
          b.addEventListener("click", () => seekTo(m.t + 0.001));
          li.appendChild(b);
          markersEl.appendChild(li);
        }
        section.setAttribute("data-size", cast.cols + "x" + cast.rows);
        section.setAttribute("data-ready", "1");
        update();
        if (cast.live) follow(cast.last_seq);

        // A live session: show everything so far, then each new frame as it is recorded.
        function follow(lastSeq) {
          seekTo(duration);
          section.setAttribute("data-state", "live");
          clock.textContent = "LIVE " + fmt(duration);
          const sep = url.includes("?") ? "&" : "?";
          const poll = () => {
            fetch(url + sep + "after=" + lastSeq, { credentials: "same-origin" })
              .then((r) => r.json())
              .then((more) => {
                if (more.error) return;
                for (const f of more.frames) {
                  const fr = frame(f);
                  frames.push(fr);
                  show(fr);
                }
                pos = frames.length;
                now = more.duration;
                lastSeq = more.last_seq;
                seek.max = String(more.duration);
                seek.value = String(now);
                section.setAttribute("data-position", now.toFixed(3));
                if (more.live) {
                  clock.textContent = "LIVE " + fmt(now);
                  setTimeout(poll, 300);
                } else {
                  clock.textContent = "ended " + fmt(now);
                  section.setAttribute("data-state", "ended");
                }
              });
          };
          setTimeout(poll, 300);
        }
      });
  }

  function applySearch() {
    const input = document.getElementById("timeline-search");
    const q = input ? input.value.toLowerCase() : "";
    for (const r of document.querySelectorAll("#timeline tr.stmt")) {
      r.hidden = q !== "" && !(r.getAttribute("data-search") || "").includes(q);
    }
  }

  function startSearch(input) {
    input.addEventListener("input", applySearch);
  }

  const CELLS = ["t", "outcome", "text", "params", "rows", "duration", "error"];

  // One statement row, built from text fields: recorded content is never parsed as HTML.
  function timelineRow(r) {
    const tr = document.createElement("tr");
    tr.className = "stmt " + r.cls;
    tr.setAttribute("data-search", r.search);
    for (const k of CELLS) {
      const td = document.createElement("td");
      if (k === "text") {
        const pre = document.createElement("pre");
        pre.textContent = r[k];
        td.appendChild(pre);
      } else {
        td.textContent = r[k];
      }
      tr.appendChild(td);
    }
    return tr;
  }

  // A live PostgreSQL session: new statements, and results of running ones, as they are
  // recorded (asks again from the first statement still running).
  function followTimeline(table) {
    const url = table.getAttribute("data-live");
    const status = document.getElementById("timeline-status");
    const sep = url.includes("?") ? "&" : "?";
    let from = parseInt(table.getAttribute("data-pending") || "0", 10);
    table.setAttribute("data-state", "live");
    const poll = () => {
      fetch(url + sep + "from=" + from, { credentials: "same-origin" })
        .then((r) => r.json())
        .then((more) => {
          if (more.error) {
            status.textContent = more.error;
            table.setAttribute("data-state", "error");
            return;
          }
          const rows = table.querySelectorAll("tr.stmt");
          for (let i = more.from; i < rows.length; i++) rows[i].remove();
          const body = table.tBodies[0] || table;
          for (const r of more.entries) body.appendChild(timelineRow(r));
          from = more.pending;
          table.setAttribute("data-next", String(more.next));
          applySearch();
          if (more.live) {
            setTimeout(poll, 300);
          } else {
            status.textContent = "session ended";
            status.className = "";
            table.setAttribute("data-state", "ended");
          }
        })
        .catch(() => setTimeout(poll, 1000));
    };
    setTimeout(poll, 300);
  }

  document.addEventListener("DOMContentLoaded", () => {
    const player = document.getElementById("player");
    if (player) startPlayer(player);
    const search = document.getElementById("timeline-search");
    if (search) startSearch(search);
    const timeline = document.getElementById("timeline");
    if (timeline && timeline.getAttribute("data-live")) followTimeline(timeline);
  });
})();
