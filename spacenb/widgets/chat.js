// spacenb chat view (the front end of spacenb.widgets.ChatWidget).
//
// The kernel sends changes, never the whole list: {t: "ops"} batches of appended or
// replaced rows ("a"), deletions ("d"), pending sends ("p") and their removal ("r"); a
// snapshot {t: "reset"} when a view asks for one; older pages {t: "older"}; files
// {t: "file"}. Everything received waits in a queue that is applied once per animation
// frame, and only a window of rows is in the DOM: the newest RENDER while the reader
// follows the bottom, a fixed range while they read further up (then nothing under them
// moves, and a button counts what is new).
//
// Peer content reaches the DOM only as textContent, or (row.m) as HTML that the kernel
// rendered from Markdown and sanitized with nh3; never any other way.

const NEAR_BOTTOM_PX = 150;
const RENDER = 150; // rows in the DOM while following the newest
const KEEP = 5000; // rows kept in memory; older ones are asked for again
const PAGE = 50;
const TYPING_EVERY_MS = 2000;
const GROUP_GAP_US = 5 * 60 * 1e6;
const CHUNK = 512 * 1024;
const STATES = {
  connecting: ["Connecting…", "connecting"],
  connected: ["Connected", "ok"],
  reconnecting: ["Reconnecting… you are offline", "warn"],
  disconnected: ["Disconnected: you are offline", "bad"],
  closed: ["Closed", "bad"],
};
let counter = 0;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function button(className, text, title) {
  const node = el("button", className, text);
  node.type = "button";
  if (title) node.title = title;
  return node;
}

function formatTime(ms) {
  const when = new Date(ms);
  const sameDay = when.toDateString() === new Date().toDateString();
  return sameDay
    ? when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : when.toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
}

function typingText(names) {
  if (names.length === 0) return "";
  if (names.length === 1) return `${names[0]} is typing…`;
  if (names.length === 2) return `${names[0]} and ${names[1]} are typing…`;
  return `${names.length} people are typing…`;
}

// First index in rows (sorted by h) whose handle is >= h.
function lowerBound(rows, h) {
  let lo = 0;
  let hi = rows.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (rows[mid].h < h) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// Keys typed in the composer are the composer's: none reaches the notebook's shortcuts
// (Lumino skips elements marked data-lm-suppress-shortcuts; stopPropagation covers the
// rest). Enter runs onEnter, Shift+Enter is a newline, Escape runs onEscape.
function composerKeys(input, onEnter, onEscape) {
  input.setAttribute("data-lm-suppress-shortcuts", "true");
  input.addEventListener("keydown", (event) => {
    event.stopPropagation();
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      onEnter();
    } else if (event.key === "Escape") {
      event.preventDefault();
      onEscape();
    }
  });
  for (const type of ["keypress", "keyup"]) {
    input.addEventListener(type, (event) => event.stopPropagation());
  }
}

function render({ model, el: root }) {
  const viewId = `v${++counter}-${Math.random().toString(36).slice(2, 8)}`;
  root.classList.add("spacenb-chat");

  // ---------------------------------------------------------------- skeleton
  const header = el("div", "spacenb-header");
  const title = el("span", "spacenb-title");
  const status = el("span", "spacenb-status");
  status.setAttribute("role", "status");
  const online = el("span", "spacenb-online");
  header.append(title, status, online);

  const log = el("div", "spacenb-log");
  log.setAttribute("role", "log");
  log.setAttribute("aria-live", "polite");
  log.setAttribute("aria-label", "Messages");
  log.tabIndex = 0;
  const older = button("spacenb-older", "Load older messages");
  const list = el("div", "spacenb-list");
  const pendingList = el("div", "spacenb-pending-list");
  log.append(older, list, pendingList);

  const unread = button("spacenb-unread", "", "Jump to the newest message");
  unread.hidden = true;
  const typing = el("div", "spacenb-typing");
  typing.setAttribute("aria-live", "polite");
  const transfers = el("div", "spacenb-transfers");
  const error = el("div", "spacenb-error");
  error.setAttribute("role", "alert");

  const composer = el("form", "spacenb-composer");
  const label = el("label", "spacenb-visually-hidden", "Message");
  label.htmlFor = `spacenb-${viewId}-input`;
  const input = el("textarea", "spacenb-input");
  input.id = label.htmlFor;
  input.rows = 1;
  input.placeholder = "Write a message (Markdown)";
  input.title = "Enter sends · Shift+Enter adds a new line · Escape leaves";
  const picker = el("input", "spacenb-file-input");
  picker.type = "file";
  picker.hidden = true;
  picker.setAttribute("aria-label", "File to send");
  const attach = button("spacenb-attach", "Attach…", "Attach a file");
  attach.setAttribute("aria-label", "Attach a file");
  const send = el("button", "spacenb-send", "Send");
  send.type = "submit";
  send.title = input.title;
  composer.append(label, attach, picker, input, send);

  root.append(header, log, unread, typing, transfers, error, composer);

  // ---------------------------------------------------------------- state
  let rows = []; // every row held, sorted by handle
  const byHandle = new Map();
  const people = new Map(); // sender → [initials, colour]
  const pending = new Map(); // pending id → row, in the order sent
  const nodes = new Map(); // handle → rendered element
  let top = null; // oldest and newest rendered handles, while reading further up
  let bottom = null;
  let following = true;
  let moreOlder = false;
  let askedOlder = false;
  let queue = [];
  let frame = 0;
  let lastTyping = 0;
  const downloads = new Map();
  const me = () => model.get("me");

  // ---------------------------------------------------------------- rows
  function upsert(row) {
    const known = byHandle.get(row.h);
    byHandle.set(row.h, row);
    if (known) {
      rows[lowerBound(rows, row.h)] = row;
    } else if (!rows.length || rows[rows.length - 1].h < row.h) {
      rows.push(row);
    } else {
      rows.splice(lowerBound(rows, row.h), 0, row);
    }
  }

  function remove(h) {
    if (!byHandle.delete(h)) return;
    rows.splice(lowerBound(rows, h), 1);
  }

  function addPeople(map) {
    for (const [name, look] of Object.entries(map || {})) people.set(name, look);
  }

  function startsGroup(previous, row) {
    return !previous || previous.s !== row.s || row.h - previous.h > GROUP_GAP_US;
  }

  function renderBody(row) {
    const body = el("div", "spacenb-body");
    if (row.m !== undefined) {
      body.classList.add("spacenb-markdown");
      body.innerHTML = row.m; // sanitized by nh3 in the kernel (spacenb.widgets.bodies)
    } else if (row.x !== undefined) {
      body.append(el("p", "", row.x));
    }
    if (row.f) {
      const chip = button("spacenb-file", `↓ ${row.f.l}`, `Download ${row.f.n}`);
      chip.addEventListener("click", () =>
        model.send({ type: "download", handle: row.h, view: viewId }),
      );
      body.append(chip);
    }
    if (row.e) body.append(el("span", "spacenb-edited", "(edited)"));
    return body;
  }

  function renderHead(row) {
    const head = el("div", "spacenb-head");
    const [initials, colour] = people.get(row.s) || ["?", "#727071"];
    const avatar = el("span", "spacenb-avatar", initials);
    avatar.style.backgroundColor = colour;
    avatar.setAttribute("aria-hidden", "true");
    head.append(avatar, el("span", "spacenb-sender", row.s));
    if (row.s === me()) head.append(el("span", "spacenb-me", "(me)"));
    if (row.h !== undefined) {
      const ms = Math.floor(row.h / 1000);
      const time = el("time", "spacenb-time", formatTime(ms));
      time.dateTime = new Date(ms).toISOString();
      time.title = new Date(ms).toString();
      head.append(time);
    }
    return head;
  }

  function renderRow(row, groupStart) {
    const node = el("div", "spacenb-msg");
    node.dataset.handle = String(row.h);
    node._row = row;
    node._groupStart = groupStart;
    const mine = row.s === me();
    if (mine) node.classList.add("spacenb-mine");
    if (groupStart) {
      node.classList.add("spacenb-group-start");
      node.append(renderHead(row));
    }
    node.append(renderBody(row));
    if (mine && model.get("connection") !== "closed") node.append(renderActions(row, node));
    return node;
  }

  // Edit and delete, for the author only, shown on hover or focus. Delete asks first.
  function renderActions(row, node) {
    const actions = el("div", "spacenb-actions");
    if (row.src !== undefined) {
      const edit = button("spacenb-edit", "Edit", "Edit this message");
      edit.addEventListener("click", () => startEdit(row, node));
      actions.append(edit);
    }
    const del = button("spacenb-delete", "Delete", "Delete this message");
    del.addEventListener("click", () => {
      actions.replaceChildren(
        el("span", "spacenb-confirm-text", "Delete this message?"),
        confirmButton("spacenb-confirm-delete", "Delete", () =>
          model.send({ type: "delete", handle: row.h }),
        ),
        confirmButton("spacenb-cancel", "Cancel", () => node.replaceWith(redraw(node))),
      );
      actions.classList.add("spacenb-confirming");
      actions.querySelector(".spacenb-cancel").focus();
    });
    actions.append(del);
    return actions;
  }

  function confirmButton(className, text, action) {
    const node = button(className, text);
    node.addEventListener("click", action);
    return node;
  }

  function redraw(node) {
    const fresh = renderRow(node._row, node._groupStart);
    nodes.set(node._row.h, fresh);
    return fresh;
  }

  function startEdit(row, node) {
    const editor = el("textarea", "spacenb-edit-input");
    editor.value = row.src;
    editor.rows = Math.min(8, row.src.split("\n").length);
    editor.setAttribute("aria-label", "Edit message");
    editor.title = "Enter saves · Shift+Enter adds a new line · Escape cancels";
    const cancel = () => {
      const fresh = redraw(node);
      node.replaceWith(fresh);
    };
    composerKeys(
      editor,
      () => {
        const text = editor.value;
        if (text.trim() && text !== row.src) {
          model.send({ type: "edit", handle: row.h, text });
          editor.disabled = true; // the edited row replaces it when the relay has it
        } else {
          cancel();
        }
      },
      cancel,
    );
    node.querySelector(".spacenb-body").replaceWith(editor);
    node.querySelector(".spacenb-actions")?.remove();
    editor.focus();
  }

  function renderPending(row) {
    const node = el("div", "spacenb-msg spacenb-mine spacenb-pending");
    node.dataset.pending = String(row.p);
    node.append(renderBody(row));
    const state = el("div", "spacenb-send-state");
    if (row.err !== undefined) {
      node.classList.add("spacenb-failed");
      state.append(el("span", "spacenb-failed-text", `Not sent: ${row.err}`));
      state.append(
        confirmButton("spacenb-retry", "Retry", () => model.send({ type: "retry", id: row.p })),
        confirmButton("spacenb-discard", "Discard", () =>
          model.send({ type: "discard", id: row.p }),
        ),
      );
    } else {
      state.append(el("span", "spacenb-sending", "Sending…"));
    }
    node.append(state);
    return node;
  }

  // ---------------------------------------------------------------- scrolling
  const nearBottom = () => log.scrollHeight - log.scrollTop - log.clientHeight < NEAR_BOTTOM_PX;

  function anchor() {
    const fromTop = log.scrollTop;
    for (const node of list.children) {
      if (node.offsetTop + node.offsetHeight > fromTop) {
        return { h: node._row.h, offset: node.offsetTop - fromTop };
      }
    }
    return null;
  }

  function restore(mark) {
    if (!mark) return;
    let node = nodes.get(mark.h);
    if (!node) {
      const next = rows[lowerBound(rows, mark.h)];
      node = next && nodes.get(next.h);
    }
    if (node) log.scrollTop = node.offsetTop - mark.offset;
  }

  function toBottom() {
    following = true;
    top = bottom = null;
    schedule();
  }

  // ---------------------------------------------------------------- one frame
  function schedule() {
    if (!frame) frame = requestAnimationFrame(applyFrame);
  }

  function apply(message) {
    if (message.to && message.to !== viewId) return;
    addPeople(message.people);
    if (message.t === "ops") {
      for (const [op, value] of message.ops) {
        if (op === "a") upsert(value);
        else if (op === "d") remove(value);
        else if (op === "p") pending.set(value.p, value);
        else if (op === "r") pending.delete(value);
      }
    } else if (message.t === "reset") {
      rows = [];
      byHandle.clear();
      for (const row of message.rows) upsert(row);
      pending.clear();
      for (const row of message.pending) pending.set(row.p, row);
      moreOlder = message.more;
      nodes.clear();
      list.replaceChildren();
      following = true;
      top = bottom = null;
    } else if (message.t === "older") {
      askedOlder = false;
      moreOlder = message.more;
      for (const row of message.rows) upsert(row);
      if (message.rows.length && top !== null) top = Math.min(top, message.rows[0].h);
      else if (message.rows.length) {
        following = false;
        top = message.rows[0].h;
        bottom = rows[rows.length - 1].h;
      }
    }
  }

  function trimMemory() {
    let excess = rows.length - KEEP;
    if (excess <= 0) return;
    const firstShown = top === null ? rows[Math.max(0, rows.length - RENDER)].h : top;
    excess = Math.min(excess, lowerBound(rows, firstShown));
    for (const row of rows.splice(0, excess)) byHandle.delete(row.h);
    if (excess > 0) moreOlder = true;
  }

  function reconcile() {
    let first;
    let last;
    if (following || top === null) {
      last = rows.length - 1;
      first = Math.max(0, last - RENDER + 1);
    } else {
      first = lowerBound(rows, top);
      last = lowerBound(rows, bottom + 1) - 1;
    }
    const wanted = rows.slice(first, last + 1);
    const keep = new Set(wanted.map((row) => row.h));
    for (const [h, node] of nodes) {
      if (!keep.has(h)) {
        node.remove();
        nodes.delete(h);
      }
    }
    let cursor = list.firstChild;
    let previous = first > 0 ? rows[first - 1] : null;
    for (const row of wanted) {
      const groupStart = startsGroup(previous, row);
      let node = nodes.get(row.h);
      if (node && (node._row !== row || node._groupStart !== groupStart)) {
        if (node.contains(document.activeElement) && node._row === row) {
          node._groupStart = groupStart; // being edited: keep the editor
        } else {
          const fresh = renderRow(row, groupStart);
          list.replaceChild(fresh, node);
          if (cursor === node) cursor = fresh;
          node = fresh;
          nodes.set(row.h, node);
        }
      }
      if (!node) {
        node = renderRow(row, groupStart);
        nodes.set(row.h, node);
        list.insertBefore(node, cursor);
      } else if (node !== cursor) {
        list.insertBefore(node, cursor);
      }
      cursor = node.nextSibling;
      previous = row;
    }
    if (!following && wanted.length) {
      top = wanted[0].h;
      bottom = wanted[wanted.length - 1].h;
    }
    pendingList.replaceChildren(...[...pending.values()].map(renderPending));
    const newer = bottom === null || following ? 0 : rows.length - lowerBound(rows, bottom + 1);
    let count = 0;
    if (newer) {
      for (let i = rows.length - newer; i < rows.length; i++) if (rows[i].s !== me()) count++;
    }
    unread.textContent = `${count} new message${count === 1 ? "" : "s"} ↓`;
    unread.hidden = count === 0;
    const hiddenOlder = first > 0;
    older.hidden = !(hiddenOlder || moreOlder);
  }

  function applyFrame() {
    frame = 0;
    const messages = queue;
    queue = [];
    const mark = following ? null : anchor();
    for (const message of messages) apply(message);
    trimMemory();
    reconcile();
    if (following) log.scrollTop = log.scrollHeight;
    else restore(mark);
  }

  // ---------------------------------------------------------------- traits
  function drawPeople() {
    title.textContent = model.get("title");
    const connection = model.get("connection");
    const [text, tone] = STATES[connection] || [connection, "warn"];
    status.textContent = text;
    status.dataset.state = connection;
    status.className = `spacenb-status spacenb-status-${tone}`;
    if (connection === "connected") {
      const names = model.get("online").map((n) => (n === me() ? `${n} (me)` : n));
      online.textContent = names.length ? `Online: ${names.join(", ")}` : "Nobody online";
    } else {
      online.textContent = `${me()} (me): offline`;
    }
    typing.textContent = typingText(model.get("typing_users"));
    const closed = connection === "closed";
    for (const node of [input, send, attach]) node.disabled = closed;
    input.placeholder = closed ? "This chat view is closed" : "Write a message (Markdown)";
    root.classList.toggle("spacenb-closed", closed);
  }

  function drawClosed() {
    drawPeople();
    for (const node of list.querySelectorAll(".spacenb-actions")) node.remove();
  }

  function drawStatus() {
    older.disabled = model.get("loading");
    older.textContent = model.get("loading") ? "Loading…" : "Load older messages";
    error.textContent = model.get("error");
    error.hidden = !model.get("error");
  }

  function drawTransfers() {
    const items = model.get("transfers");
    transfers.replaceChildren(
      ...items.map((item) => {
        const row = el("div", "spacenb-transfer");
        row.dataset.id = item.id;
        const bar = el("progress", "spacenb-progress");
        bar.max = item.total;
        bar.value = item.done;
        bar.setAttribute("aria-label", item.label);
        row.append(bar, el("span", "spacenb-transfer-label", item.label));
        if (item.failed) {
          row.classList.add("spacenb-failed");
          row.append(
            confirmButton("spacenb-dismiss", "Dismiss", () =>
              model.send({ type: "dismiss", id: item.id }),
            ),
          );
        }
        return row;
      }),
    );
  }

  // ---------------------------------------------------------------- actions
  function submit() {
    const text = input.value;
    if (!text.trim() || model.get("connection") === "closed") return;
    model.send({ type: "send", text });
    input.value = "";
    toBottom();
  }

  async function upload(file) {
    const id = `${viewId}-${Date.now()}`;
    model.send({ type: "upload", id, name: file.name, size: file.size, mime: file.type });
    for (let offset = 0; offset < file.size; offset += CHUNK) {
      const part = await file.slice(offset, offset + CHUNK).arrayBuffer();
      model.send({ type: "chunk", id }, undefined, [part]);
    }
    model.send({ type: "upload_end", id });
  }

  function receiveFile(message, buffers) {
    const key = `${message.h}`;
    const parts = downloads.get(key) || [];
    parts.push(buffers[0]);
    downloads.set(key, parts);
    const received = parts.reduce((sum, part) => sum + part.byteLength, 0);
    if (received < message.size) return;
    downloads.delete(key);
    const url = URL.createObjectURL(new Blob(parts, { type: message.mime }));
    const link = el("a");
    link.href = url;
    link.download = message.name;
    link.hidden = true;
    root.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  }

  composer.addEventListener("submit", (event) => {
    event.preventDefault();
    submit();
  });
  composerKeys(input, submit, () => {
    input.blur();
    log.focus({ preventScroll: true });
  });
  input.addEventListener("input", () => {
    const now = Date.now();
    if (input.value.trim() && now - lastTyping > TYPING_EVERY_MS) {
      lastTyping = now;
      model.send({ type: "typing" });
    }
  });
  attach.addEventListener("click", () => picker.click());
  picker.addEventListener("change", () => {
    for (const file of picker.files) upload(file);
    picker.value = "";
  });
  older.addEventListener("click", () => {
    const first = top === null ? Math.max(0, rows.length - RENDER) : lowerBound(rows, top);
    if (first > 0) {
      if (following || top === null) {
        bottom = rows[rows.length - 1].h;
        following = false;
      }
      top = rows[Math.max(0, first - PAGE)].h;
      schedule();
    } else if (moreOlder && !askedOlder) {
      askedOlder = true;
      model.send({ type: "load_older", before: rows.length ? rows[0].h : null, view: viewId });
    }
  });
  unread.addEventListener("click", toBottom);
  log.addEventListener("scroll", () => {
    const near = nearBottom();
    if (near && !following) {
      const newest = rows.length ? rows[rows.length - 1].h : null;
      if (bottom === newest) {
        following = true;
        top = bottom = null;
      } else {
        toBottom(); // back at the bottom of what is shown: show what came since
      }
    } else if (!near && following) {
      following = false;
      const shown = [...list.children];
      top = shown.length ? shown[0]._row.h : null;
      bottom = shown.length ? shown[shown.length - 1]._row.h : null;
    }
  });

  const onCustom = (message, buffers) => {
    if (message.t === "file") {
      if (!message.to || message.to === viewId) receiveFile(message, buffers);
      return;
    }
    queue.push(message);
    schedule();
  };
  const handlers = [
    ["msg:custom", onCustom],
    ["change:online change:typing_users change:title change:me", drawPeople],
    ["change:connection", drawClosed],
    ["change:loading change:error", drawStatus],
    ["change:transfers", drawTransfers],
  ];
  for (const [name, fn] of handlers) model.on(name, fn);
  drawPeople();
  drawStatus();
  drawTransfers();
  model.send({ type: "hello", view: viewId });
  return () => {
    for (const [name, fn] of handlers) model.off(name, fn);
    if (frame) cancelAnimationFrame(frame);
  };
}

export default { render };
