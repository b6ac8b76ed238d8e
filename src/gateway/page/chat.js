// The chat page: posts to /chat/stream and shows the reply as its events arrive.

const $ = (id) => document.getElementById(id);
const form = $("chat");
const userInput = $("user");
const keyField = $("key-field");
const keyInput = $("key");
const textInput = $("text");
const sendButton = $("send");
const log = $("log");
const quota = $("quota");
const errorBox = $("error");

/** "in 42 seconds" for a Retry-After of 42 (or its date), "in a moment" when it says nothing. */
function retryIn(retryAfter) {
  const seconds = /^\d+$/.test(retryAfter ?? "")
    ? Number(retryAfter)
    : Math.ceil((Date.parse(retryAfter ?? "") - Date.now()) / 1000);
  if (!(seconds > 0)) return "in a moment";
  if (seconds < 120) return seconds === 1 ? "in 1 second" : `in ${seconds} seconds`;
  return `in ${Math.ceil(seconds / 60)} minutes`;
}

/** What the page says for each refusal the gateway can answer with. */
function describeError(status, body, retryAfter) {
  const error = body?.error ?? "";
  if (status === 400) {
    if (error === "text blocked by filter") {
      return "Your message was blocked by the content filter. Please rephrase it.";
    }
    if (error === "text is required") return "Please type a message first.";
    if (error === "text too long") return "Your message is too long. Please shorten it.";
    if (error === "bad json or missing user_id") return "Please enter a user id.";
    if (error === "user_id too long") return "Your user id is too long: at most 256 characters.";
    if (error === "user_id does not match the api key") {
      return "This API key belongs to another user id. Enter the user id it was issued for.";
    }
  }
  if (status === 401) {
    return keyInput.value === ""
      ? "This gateway needs an API key: enter yours above and send again."
      : "The API key was not accepted. Check it and send again.";
  }
  if (status === 413) return "Your message is too large to send.";
  if (status === 429) {
    if (error === "quota exceeded") {
      return "Quota exceeded: you have used today's quota. It resets at midnight UTC.";
    }
    return `Too many requests. Please try again ${retryIn(retryAfter)}.`;
  }
  if (status >= 500) {
    if (error === "llm failed") {
      return "The model failed to answer; your quota for this message was given back. Please try again.";
    }
    const what = error === "" ? "the server" : `${error}`;
    return `Something went wrong on our side (${what}). Please try again.`;
  }
  return `The request failed (HTTP ${status}${error ? `: ${error}` : ""}).`;
}

function showError(message) {
  errorBox.textContent = message;
  errorBox.hidden = false;
}

function clearError() {
  errorBox.hidden = true;
  errorBox.textContent = "";
}

/**
 * Whether the log follows what is added: yes until the reader scrolls up,
 * and again once they scroll back to the end.
 */
let following = true;
/**
 * Where followLog last put the log. The scroll event of that scroll comes a
 * frame later, when a fast reply may have grown by more than the margin
 * meanwhile: the log is still where it was put, so the reader did not
 * scroll, and it keeps following.
 */
let followedTo;
log.addEventListener("scroll", () => {
  if (log.scrollTop === followedTo) return;
  followedTo = undefined;
  following = log.scrollHeight - log.scrollTop - log.clientHeight < 24;
});
let scrollQueued = false;
/**
 * Scrolls the log to its end once per frame at most: scrolling at every
 * piece of a reply made the browser lay the page out each time, which froze
 * the tab for seconds on a reply of a few thousand pieces.
 */
function followLog() {
  if (scrollQueued) return;
  scrollQueued = true;
  requestAnimationFrame(() => {
    scrollQueued = false;
    if (!following) return;
    log.scrollTop = log.scrollHeight;
    followedTo = log.scrollTop;
  });
}

function addMessage(kind, text) {
  $("empty")?.remove();
  const el = document.createElement("div");
  el.className = `msg ${kind}`;
  // Right-to-left text is laid out as such, whatever the page's direction.
  el.dir = "auto";
  el.textContent = text;
  log.append(el);
  following = true;
  followLog();
  return el;
}

/** `headers` with the API key typed in, if any. */
const withKey = (headers) =>
  keyInput.value === "" ? headers : { ...headers, authorization: `Bearer ${keyInput.value}` };

/** The quota of the user id in the box, read from GET /quota; "—" when it cannot be. */
async function loadQuota() {
  const userId = userInput.value.trim();
  if (userId === "" || busy) return;
  const chatsBefore = chatsSent;
  try {
    const res = await fetch(`/quota?user_id=${encodeURIComponent(userId)}`, {
      headers: withKey({}),
    });
    // A gateway with API keys: say so at once, not after a first message.
    if (res.status === 401) keyField.hidden = false;
    const body = res.ok ? await res.json() : undefined;
    // Another id may have been typed, or a chat sent (and even answered,
    // showing a quota newer than this), while this was read.
    if (userInput.value.trim() !== userId || busy || chatsSent !== chatsBefore) return;
    quota.textContent = typeof body?.remaining === "number" ? String(body.remaining) : "—";
  } catch {
    // No quota to show: the chat itself will say what is wrong.
  }
}

/**
 * The chats the history holds (GET /history) for the user id in the box,
 * above this visit's: the newest page at load (and when another id is
 * typed), older ones at a click. Not announced (aria-live off): only this
 * visit's replies are.
 */
const earlier = document.createElement("div");
earlier.className = "earlier";
earlier.setAttribute("aria-live", "off");
const earlierButton = document.createElement("button");
earlierButton.type = "button";
earlierButton.className = "earlier-button";
earlierButton.hidden = true;
earlier.append(earlierButton);
log.prepend(earlier);
/** Whose history is shown, and the token of the page before it ("" once all is). */
let past;
/** Bumped when another user id is typed: a page read for the one before is dropped. */
let historyRun = 0;
/** The run whose page is being read, if one is. */
let historyLoading;
/**
 * This visit's chats that reached `done`, as "user\0cleaned\0reply": the
 * history has them too, and they are shown below already.
 */
const shownChats = new Map();
/**
 * The chats of `shownChats` the history shown now is still to meet: a copy
 * made as the newest page is read, so that another read (another user id
 * typed, then this one again) leaves out this visit's chats again.
 */
let unmet = new Map();
const chatKey = (userId, text, reply) => `${userId}\0${text}\0${reply}`;

/** Shows the history of the user id now in the box instead, from its newest page. */
function restartHistory() {
  historyRun++;
  past = undefined;
  for (const msg of earlier.querySelectorAll(".msg")) msg.remove();
  earlierButton.hidden = true;
  void loadHistory();
}

async function loadHistory() {
  const run = historyRun;
  const userId = past?.userId ?? userInput.value.trim();
  if (userId === "" || historyLoading === run || past?.next === "") return;
  historyLoading = run;
  const token = past?.next ?? "";
  const query = `user_id=${encodeURIComponent(userId)}&page_size=20${
    token === "" ? "" : `&page_token=${encodeURIComponent(token)}`
  }`;
  try {
    const res = await fetch(`/history?${query}`, { headers: withKey({}) });
    if (run !== historyRun) return;
    // Read again once a key is typed.
    if (res.status === 401) keyField.hidden = false;
    // A user id the gateway refuses has no history to show.
    if (res.status === 401 || res.status === 400) return;
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const page = await res.json();
    if (run !== historyRun) return;
    past = { userId, next: page.next_page_token };
    if (token === "") unmet = new Map(shownChats);
    const followed = log.scrollHeight - log.scrollTop;
    // Newest first: each goes above the one before it.
    for (const item of page.items) {
      const key = chatKey(userId, item.text, item.reply);
      const seen = unmet.get(key) ?? 0;
      if (seen > 0) {
        unmet.set(key, seen - 1);
        continue;
      }
      const when = new Date(item.created_at).toLocaleString();
      const mine = historyMessage("mine", item.text, when);
      const reply = historyMessage("reply", item.reply, when);
      earlierButton.after(mine, reply);
    }
    if (earlier.querySelector(".msg") !== null) $("empty")?.remove();
    earlierButton.textContent = "Show earlier messages";
    earlierButton.hidden = past.next === "";
    // The first page ends where this visit starts; an older one keeps the reader where they were.
    if (token === "") followLog();
    else log.scrollTop = log.scrollHeight - followed;
  } catch {
    if (run !== historyRun) return;
    earlierButton.textContent = "Earlier messages could not be loaded: try again";
    earlierButton.hidden = false;
  } finally {
    if (historyLoading === run) historyLoading = undefined;
  }
}

function historyMessage(kind, text, when) {
  const el = document.createElement("div");
  el.className = `msg ${kind}`;
  el.dir = "auto";
  el.title = when;
  el.textContent = text;
  return el;
}

earlierButton.addEventListener("click", async () => {
  await loadHistory();
  if (earlierButton.hidden) textInput.focus();
});

/** Reads a text/event-stream body, calling onEvent(name, data) per event. */
async function readEvents(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    const frames = buffer.split(/\r?\n\r?\n/);
    buffer = frames.pop() ?? "";
    for (const frame of frames) {
      let event = "message";
      let data = "";
      for (const line of frame.split(/\r?\n/)) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trimStart();
      }
      if (data !== "") onEvent(event, JSON.parse(data));
    }
  }
}

/** The reply being read, while it streams: the Stop button aborts it. */
let running;
/** True from a send until its answer is over: one message at a time. */
let busy = false;
/** Chats sent so far: a quota read while one was sent is stale. */
let chatsSent = 0;

/**
 * The button says Send when idle, does nothing while the gateway has not
 * answered yet (a second click must not send twice or abort a charged
 * request unseen), and says Stop while the reply streams. It is marked
 * aria-disabled rather than disabled while waiting: a disabled button loses
 * the keyboard's focus, and Space could then not stop the reply.
 */
function setState(state, controller) {
  running = state === "streaming" ? controller : undefined;
  busy = state !== "idle";
  if (state === "waiting") chatsSent++;
  sendButton.setAttribute("aria-disabled", String(state === "waiting"));
  sendButton.textContent = { idle: "Send", waiting: "Sending…", streaming: "Stop" }[state];
  sendButton.classList.toggle("stop", state === "streaming");
  // One announcement when the reply is whole, not one per piece.
  log.setAttribute("aria-busy", String(state !== "idle"));
}

async function send() {
  if (busy) return;
  clearError();
  const userId = userInput.value.trim();
  const text = textInput.value;
  if (userId === "") return showError("Please enter a user id.");
  if (text.trim() === "") return showError("Please type a message first.");
  // A header carries no other characters: fetch would fail with its own words.
  if (!/^[\x21-\x7e]*$/.test(keyInput.value.trim())) {
    keyInput.focus();
    return showError("An API key has printable ASCII characters only: check the key typed in.");
  }

  const controller = new AbortController();
  setState("waiting");
  const quotaBefore = quota.textContent;
  /** Shows `remaining` as the quota, unless another user id was typed meanwhile. */
  const showQuota = (remaining) => {
    if (userInput.value.trim() === userId) quota.textContent = remaining;
  };
  let replyEl;
  let replyText;
  /** Whether the stream said how it ended (done or error). */
  let ended = false;
  let refused = false;
  let focus = textInput;
  try {
    const res = await fetch("/chat/stream", {
      method: "POST",
      headers: withKey({ "content-type": "application/json" }),
      body: JSON.stringify({ user_id: userId, text }),
      signal: controller.signal,
    });
    const type = res.headers.get("content-type") ?? "";
    if (!res.ok || !type.startsWith("text/event-stream")) {
      // Nothing was sent: the text stays in the box to be edited.
      const body = await res.json().catch(() => null);
      refused = true;
      if (res.status === 401) {
        keyField.hidden = false;
        focus = keyInput;
      } else if (typeof body?.error === "string" && body.error.startsWith("user_id")) {
        focus = userInput;
      }
      showError(describeError(res.status, body, res.headers.get("retry-after")));
      return;
    }
    setState("streaming", controller);
    const mine = addMessage("mine", text);
    if (textInput.value === text) textInput.value = "";
    replyEl = addMessage("reply streaming", "");
    // Pieces are added to one text node: setting textContent anew at every
    // piece copied the whole reply each time.
    replyText = replyEl.appendChild(document.createTextNode(""));
    await readEvents(res.body, (event, data) => {
      if (event === "meta") {
        // Show the text as the filter cleaned it: that is what the model got.
        mine.textContent = data.cleaned;
        showQuota(String(data.remaining));
      } else if (event === "delta") replyText.appendData(data.text);
      else if (event === "done") {
        ended = true;
        replyText.data = data.reply;
        const key = chatKey(userId, mine.textContent, data.reply);
        shownChats.set(key, (shownChats.get(key) ?? 0) + 1);
        // What is left once the chat was priced (the same as meta's unless priced by tokens).
        if (typeof data.remaining === "number") showQuota(String(data.remaining));
      } else if (event === "error") {
        ended = true;
        replyEl.classList.add("failed");
        if (replyText.data === "") replyText.data = "(no reply)";
        // The charge was given back: the quota is what it was before this message.
        showQuota(quotaBefore);
        showError("The model failed while answering; your quota for this message was given back.");
      }
      followLog();
    });
    if (!ended) {
      replyEl.classList.add("failed");
      showError("The reply was cut off: the gateway closed the stream before its end.");
    }
  } catch (err) {
    if (controller.signal.aborted) {
      replyText?.appendData(" (stopped)");
    } else if (replyEl !== undefined) {
      replyEl.classList.add("failed");
      showError(`The connection to the gateway was lost while the reply streamed: ${err.message}`);
    } else {
      showError(`Could not reach the gateway: ${err.message}`);
    }
  } finally {
    replyEl?.classList.remove("streaming");
    setState("idle");
    // A refusal may have been the quota running out: read what is left. So
    // for a quota not shown: another user id typed while the reply streamed
    // (its read waited for the reply), or none known to give back.
    if (refused || quota.textContent === "—") void loadQuota();
    // A reply stopped or cut off keeps its charge, but priced by tokens
    // (QUOTA_COST_MODE=tokens) it is settled to the part relayed: less than
    // meta's reservation shown. The gateway settles once it sees the
    // connection gone, just after this.
    else if (replyEl !== undefined && !ended) setTimeout(loadQuota, 1000);
    // The history not read yet (refused without a key): a key typed and sent
    // with Enter in its field was never "changed".
    if (past === undefined) void loadHistory();
    // Back to the message box, unless the user went on in another field
    // while the reply streamed (typing another user id, say).
    const active = document.activeElement;
    if (refused || active === null || active === document.body || active === sendButton) {
      focus.focus();
    }
  }
}

// Stop is the button only: Enter while a reply streams does nothing.
sendButton.addEventListener("click", (event) => {
  if (running === undefined) return;
  event.preventDefault();
  running.abort();
});

form.addEventListener("submit", (event) => {
  event.preventDefault();
  if (running === undefined) send();
});

// Enter sends from any field. In the one-line fields the browser would
// otherwise click the button, which stops a streaming reply: Shift+Enter
// too there, so it sends as well; only the message box takes it as a new line.
// The Enter that ends an IME composition picks the word and sends nothing.
// Safari ends the composition before that Enter's keydown, which so has
// isComposing false: its keyCode 229 (the IME's) tells it.
const enterSends = (event) => {
  if (event.key !== "Enter" || event.isComposing || event.keyCode === 229) return;
  if (event.shiftKey && event.currentTarget === textInput) return;
  event.preventDefault();
  form.requestSubmit();
};
for (const field of [textInput, userInput, keyInput]) field.addEventListener("keydown", enterSends);

// The user id typed is kept in the browser: a reload (or the page opened
// again) goes on as that user, not as the default one, whose quota and
// history are everyone's who did not change it. Storage may be refused
// (a private window, say): the page works without it.
const userKey = "chatmesh.user_id";
try {
  const kept = localStorage.getItem(userKey);
  if (kept !== null && kept.trim() !== "") userInput.value = kept;
} catch {}
const keepUser = () => {
  try {
    localStorage.setItem(userKey, userInput.value);
  } catch {}
};

// The quota and history shown are the user id's in the box: read at load,
// and again once the id has stopped changing for a moment.
let quotaTimer;
userInput.addEventListener("input", () => {
  keepUser();
  quota.textContent = "—";
  clearTimeout(quotaTimer);
  quotaTimer = setTimeout(() => {
    loadQuota();
    if (userInput.value.trim() !== past?.userId) restartHistory();
  }, 400);
});
keyInput.addEventListener("change", () => {
  loadQuota();
  if (past === undefined) loadHistory();
});
loadQuota();
loadHistory();
