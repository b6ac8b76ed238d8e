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

/** What the page says for each refusal the gateway can answer with. */
function describeError(status, body) {
  const error = body?.error ?? "";
  if (status === 400) {
    if (error === "text blocked by filter") {
      return "Your message was blocked by the content filter. Please rephrase it.";
    }
    if (error === "text is required") return "Please type a message first.";
    if (error === "text too long") return "Your message is too long. Please shorten it.";
    if (error === "bad json or missing user_id") return "Please enter a user id.";
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
    return "Too many requests. Please wait a moment and try again.";
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

function addMessage(kind, text) {
  $("empty")?.remove();
  const el = document.createElement("div");
  el.className = `msg ${kind}`;
  el.textContent = text;
  log.append(el);
  log.scrollTop = log.scrollHeight;
  return el;
}

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

/**
 * The button says Send when idle, is disabled while the gateway has not
 * answered yet (a second click must not send twice or abort a charged
 * request unseen), and says Stop while the reply streams.
 */
function setState(state, controller) {
  running = state === "streaming" ? controller : undefined;
  busy = state !== "idle";
  sendButton.disabled = state === "waiting";
  sendButton.textContent = { idle: "Send", waiting: "Sending…", streaming: "Stop" }[state];
  sendButton.classList.toggle("stop", state === "streaming");
}

async function send() {
  if (busy) return;
  clearError();
  const userId = userInput.value.trim();
  const text = textInput.value;
  if (userId === "") return showError("Please enter a user id.");
  if (text.trim() === "") return showError("Please type a message first.");

  const controller = new AbortController();
  setState("waiting");
  const quotaBefore = quota.textContent;
  let replyEl;
  let focus = textInput;
  try {
    const headers = { "content-type": "application/json" };
    if (keyInput.value !== "") headers.authorization = `Bearer ${keyInput.value}`;
    const res = await fetch("/chat/stream", {
      method: "POST",
      headers,
      body: JSON.stringify({ user_id: userId, text }),
      signal: controller.signal,
    });
    const type = res.headers.get("content-type") ?? "";
    if (!res.ok || !type.startsWith("text/event-stream")) {
      // Nothing was sent: the text stays in the box to be edited.
      const body = await res.json().catch(() => null);
      if (res.status === 401) {
        keyField.hidden = false;
        focus = keyInput;
      }
      showError(describeError(res.status, body));
      return;
    }
    setState("streaming", controller);
    const mine = addMessage("mine", text);
    if (textInput.value === text) textInput.value = "";
    replyEl = addMessage("reply streaming", "");
    await readEvents(res.body, (event, data) => {
      if (event === "meta") {
        // Show the text as the filter cleaned it: that is what the model got.
        mine.textContent = data.cleaned;
        quota.textContent = String(data.remaining);
      } else if (event === "delta") replyEl.textContent += data.text;
      else if (event === "done") {
        replyEl.textContent = data.reply;
        // What is left once the chat was priced (the same as meta's unless priced by tokens).
        if (typeof data.remaining === "number") quota.textContent = String(data.remaining);
      } else if (event === "error") {
        replyEl.classList.add("failed");
        if (replyEl.textContent === "") replyEl.textContent = "(no reply)";
        // The charge was given back: the quota is what it was before this message.
        quota.textContent = quotaBefore;
        showError("The model failed while answering; your quota for this message was given back.");
      }
      log.scrollTop = log.scrollHeight;
    });
  } catch (err) {
    if (controller.signal.aborted) {
      if (replyEl) replyEl.textContent += " (stopped)";
    } else {
      showError(`Could not reach the gateway: ${err.message}`);
    }
  } finally {
    replyEl?.classList.remove("streaming");
    setState("idle");
    focus.focus();
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
// otherwise click the button, which stops a streaming reply.
const enterSends = (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    form.requestSubmit();
  }
};
for (const field of [textInput, userInput, keyInput]) field.addEventListener("keydown", enterSends);

userInput.addEventListener("input", () => {
  quota.textContent = "—";
});
