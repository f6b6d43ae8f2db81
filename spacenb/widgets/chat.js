// spacenb chat view: renders the `messages` trait (the newest window) of a ChatWidget.
// Peer content is only ever assigned with textContent or as attributes, never parsed as markup.

const NEAR_BOTTOM_PX = 150;
const TYPING_EVERY_MS = 2000;
let counter = 0;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function formatTime(ms) {
  const when = new Date(ms);
  const now = new Date();
  const sameDay = when.toDateString() === now.toDateString();
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

function renderMessage(msg) {
  const row = el("div", "spacenb-msg");
  row.dataset.handle = String(msg.handle);
  if (msg.group_start) row.classList.add("spacenb-group-start");
  if (msg.mine) row.classList.add("spacenb-mine");
  const full = new Date(msg.ts).toString();
  if (msg.group_start) {
    const head = el("div", "spacenb-head");
    const avatar = el("span", "spacenb-avatar", msg.initials);
    avatar.style.backgroundColor = msg.color;
    avatar.setAttribute("aria-hidden", "true");
    head.append(avatar, el("span", "spacenb-sender", msg.sender));
    if (msg.mine) head.append(el("span", "spacenb-me", "(me)"));
    const time = el("time", "spacenb-time", formatTime(msg.ts));
    time.dateTime = new Date(msg.ts).toISOString();
    time.title = full;
    head.append(time);
    row.append(head);
  }
  const body = el("div", "spacenb-body", msg.body);
  body.title = full;
  if (msg.edited) body.append(" ", el("span", "spacenb-edited", "(edited)"));
  row.append(body);
  return row;
}

function render({ model, el: root }) {
  const id = `spacenb-chat-${++counter}`;
  root.classList.add("spacenb-chat");

  const header = el("div", "spacenb-header");
  const title = el("span", "spacenb-title");
  const online = el("span", "spacenb-online");
  header.append(title, online);

  const older = el("button", "spacenb-older", "Load older messages");
  older.type = "button";
  const log = el("div", "spacenb-log");
  log.setAttribute("role", "log");
  log.setAttribute("aria-live", "polite");
  log.setAttribute("aria-label", "Messages");
  log.tabIndex = 0;
  const list = el("div", "spacenb-list");
  log.append(older, list);

  const unread = el("button", "spacenb-unread");
  unread.type = "button";
  unread.hidden = true;
  const typing = el("div", "spacenb-typing");
  typing.setAttribute("aria-live", "polite");
  const error = el("div", "spacenb-error");
  error.setAttribute("role", "alert");

  const composer = el("form", "spacenb-composer");
  const label = el("label", "spacenb-visually-hidden", "Message");
  label.htmlFor = `${id}-input`;
  const input = el("textarea", "spacenb-input");
  input.id = `${id}-input`;
  input.rows = 1;
  input.placeholder = "Write a message";
  input.title = "Enter sends · Shift+Enter adds a new line";
  const send = el("button", "spacenb-send", "Send");
  send.type = "submit";
  send.title = input.title;
  composer.append(label, input, send);

  root.append(header, log, unread, typing, error, composer);

  let newest = 0; // newest handle the reader has seen
  let unreadCount = 0;
  let lastTyping = 0;

  const nearBottom = () => log.scrollHeight - log.scrollTop - log.clientHeight < NEAR_BOTTOM_PX;
  const toBottom = () => {
    log.scrollTop = log.scrollHeight;
    unreadCount = 0;
    unread.hidden = true;
  };

  function drawMessages() {
    const messages = model.get("messages");
    const follow = nearBottom() || newest === 0;
    const fromBottom = log.scrollHeight - log.scrollTop;
    const fragment = document.createDocumentFragment();
    for (const msg of messages) fragment.append(renderMessage(msg));
    list.replaceChildren(fragment);
    const latest = messages.length ? messages[messages.length - 1].handle : newest;
    if (follow) {
      toBottom();
    } else {
      log.scrollTop = log.scrollHeight - fromBottom; // keep the reader's place
      unreadCount += messages.filter((m) => m.handle > newest && !m.mine).length;
      unread.textContent = `${unreadCount} new message${unreadCount === 1 ? "" : "s"} ↓`;
      unread.hidden = unreadCount === 0;
    }
    newest = Math.max(newest, latest);
  }

  function drawPeople() {
    title.textContent = model.get("title");
    const me = model.get("me");
    const names = model.get("online").map((n) => (n === me ? `${n} (me)` : n));
    online.textContent = names.length ? `Online: ${names.join(", ")}` : "Nobody online";
    typing.textContent = typingText(model.get("typing_users"));
  }

  function drawStatus() {
    older.hidden = !model.get("can_load_older");
    older.disabled = model.get("loading");
    older.textContent = model.get("loading") ? "Loading…" : "Load older messages";
    error.textContent = model.get("error");
    error.hidden = !model.get("error");
  }

  function submit() {
    const text = input.value;
    if (!text.trim()) return;
    model.send({ type: "send", text });
    input.value = "";
    toBottom();
  }

  composer.addEventListener("submit", (event) => {
    event.preventDefault();
    submit();
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      submit();
    }
  });
  input.addEventListener("input", () => {
    const now = Date.now();
    if (input.value.trim() && now - lastTyping > TYPING_EVERY_MS) {
      lastTyping = now;
      model.send({ type: "typing" });
    }
  });
  older.addEventListener("click", () => model.send({ type: "load_older" }));
  unread.addEventListener("click", toBottom);
  log.addEventListener("scroll", () => {
    if (nearBottom()) {
      unreadCount = 0;
      unread.hidden = true;
    }
  });

  const handlers = [
    ["change:messages", drawMessages],
    ["change:online change:typing_users change:title change:me", drawPeople],
    ["change:can_load_older change:loading change:error", drawStatus],
  ];
  for (const [name, fn] of handlers) model.on(name, fn);
  drawMessages();
  drawPeople();
  drawStatus();
  return () => {
    for (const [name, fn] of handlers) model.off(name, fn);
  };
}

export default { render };
