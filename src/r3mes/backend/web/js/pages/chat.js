// Chat: pick a model (base, adapter@version or auto), stream the answer, stop it, see the cost.

import { ApiError, get, itemsOf, request } from "../api.js";
import { field, fmtInt, h, replace } from "../dom.js";
import { renderMarkdown } from "../markdown.js";
import { session } from "../session.js";
import {
  deleteConversation,
  draft,
  getConversation,
  listConversations,
  newConversation,
  saveConversation,
  saveDraft,
} from "../conversations.js";
import { billedFor, modelLabel, priceOf } from "../billing.js";

const MAX_TOKENS = 512;

export async function chatPage(main) {
  const state = { models: [], pricing: null, conversation: null, controller: null };
  const heading = h("h1", { tabindex: "-1" }, "Chat");
  const modelSelect = h("select", { name: "model" });
  const modelInfo = h("p", { class: "hint", id: "model-info" });
  const balance = h("p", { class: "hint balance", "data-testid": "chat-balance" });
  const routeInfo = h("p", { class: "route", "aria-live": "polite" });
  // Streaming text is not read out token by token; screen readers hear when an answer ends.
  const announce = h("p", { class: "visually-hidden", role: "status" });
  const log = h("ol", { class: "messages", "aria-label": "Conversation", "aria-live": "off" });
  const input = h("textarea", { name: "message", rows: "3", placeholder: "Ask something…", value: draft() });
  const send = h("button", { type: "submit", class: "primary" }, "Send");
  const stop = h("button", { type: "button", class: "danger", disabled: true }, "Stop");
  const history = h("ul", { class: "conversations" });
  const newButton = h("button", { type: "button" }, "New chat");

  const form = h(
    "form",
    { class: "composer", "aria-label": "Send a message" },
    field("Message", input, "Enter sends, Shift+Enter adds a line."),
    h("div", { class: "composer-actions" }, send, stop),
  );
  main.append(
    h(
      "div",
      { class: "chat-layout" },
      h(
        "aside",
        { class: "chat-side", "aria-label": "Conversations" },
        h("h2", {}, "Conversations"),
        newButton,
        history,
      ),
      h(
        "section",
        { class: "chat-main", "aria-labelledby": "chat-h" },
        h("div", { class: "chat-head" }, Object.assign(heading, { id: "chat-h" }), field("Model", modelSelect), modelInfo, balance),
        routeInfo,
        announce,
        log,
        form,
      ),
    ),
  );

  function selectedModel() {
    return modelSelect.value || state.conversation?.model || "auto";
  }

  function renderHistory() {
    const items = listConversations();
    replace(
      history,
      items.map((c) =>
        h(
          "li",
          { class: c.id === state.conversation?.id ? "current" : "" },
          h("button", { type: "button", class: "link", "aria-current": c.id === state.conversation?.id ? "true" : null, onclick: () => open(c.id) }, c.title || "Untitled"),
          h("button", { type: "button", class: "icon", "aria-label": `Delete conversation ${c.title || ""}`, onclick: () => remove(c.id) }, "×"),
        ),
      ),
    );
  }

  function renderMessages() {
    replace(log, (state.conversation?.messages || []).map(messageItem));
    log.lastElementChild?.scrollIntoView({ block: "end" });
  }

  function open(id) {
    if (state.controller) return;
    state.conversation = getConversation(id) || newConversation(selectedModel());
    if (state.conversation.model && [...modelSelect.options].some((o) => o.value === state.conversation.model)) {
      modelSelect.value = state.conversation.model;
    }
    renderHistory();
    renderMessages();
  }

  function remove(id) {
    deleteConversation(id);
    if (state.conversation?.id === id) state.conversation = newConversation(selectedModel());
    renderHistory();
    renderMessages();
  }

  newButton.addEventListener("click", () => {
    if (state.controller) return;
    state.conversation = newConversation(selectedModel());
    renderHistory();
    renderMessages();
    input.focus();
  });
  input.addEventListener("input", () => saveDraft(input.value));
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  modelSelect.addEventListener("change", () => {
    describeModel();
    if (state.conversation) state.conversation.model = modelSelect.value;
  });
  stop.addEventListener("click", () => state.controller?.abort());
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text || state.controller) return;
    ask(text);
  });

  async function showBalance() {
    if (session().state !== "in" || session().via === "api-key") return;
    try {
      const me = await get("/api/me");
      balance.textContent = `Balance: ${fmtInt(me.available)} credits${me.held ? ` (${fmtInt(me.held)} held)` : ""}`;
    } catch {
      balance.textContent = "";
    }
  }

  function describeModel() {
    const model = state.models.find((m) => m.id === modelSelect.value);
    const price = priceOf(state.pricing, modelSelect.value);
    const parts = [];
    if (model?.description) parts.push(model.description);
    if (price) parts.push(`${price.prompt} credits per 1K prompt tokens, ${price.completion} per 1K completion tokens`);
    modelInfo.textContent = parts.join(" · ");
  }

  async function loadModels() {
    if (session().state !== "in") {
      replace(modelSelect, h("option", { value: "auto" }, "auto (log in to chat)"));
      replace(routeInfo, h("span", {}, "Log in to chat: "), h("a", { href: "#/login" }, "wallet or API key"), ".");
      send.disabled = true;
      return;
    }
    try {
      const [models, pricing] = await Promise.all([get("/v1/models"), get("/v1/pricing").catch(() => null)]);
      state.models = itemsOf(models, "data");
      state.pricing = pricing;
      replace(
        modelSelect,
        state.models.map((m) => h("option", { value: m.id }, modelLabel(m))),
      );
      const wanted = state.conversation?.model;
      if (wanted && state.models.some((m) => m.id === wanted)) modelSelect.value = wanted;
      describeModel();
      if (!state.models.length) routeInfo.textContent = "No serving node is live right now; try again in a moment.";
    } catch (error) {
      routeInfo.textContent = `Models could not be listed: ${error.message}`;
    }
  }

  async function ask(text) {
    const conversation = state.conversation;
    conversation.model = selectedModel();
    conversation.messages.push({ role: "user", content: text });
    const answer = { role: "assistant", content: "", meta: { model: conversation.model, pending: true } };
    conversation.messages.push(answer);
    saveConversation(conversation);
    input.value = "";
    saveDraft("");
    renderHistory();
    renderMessages();
    const answerItem = log.lastElementChild;
    const controller = new AbortController();
    state.controller = controller;
    send.disabled = true;
    stop.disabled = false;
    log.setAttribute("aria-busy", "true");
    try {
      await stream(conversation, answer, controller, () => {
        const atBottom = window.innerHeight + window.scrollY >= document.documentElement.scrollHeight - 80;
        updateMessage(answerItem, answer);
        if (atBottom) answerItem.scrollIntoView({ block: "end" });
      });
    } catch (error) {
      if (controller.signal.aborted) {
        answer.meta.stopped = true;
      } else {
        answer.meta.error = error instanceof ApiError ? `${error.message}` : `The answer was cut off: ${error.message}`;
        if (error instanceof ApiError && error.status === 401) {
          // Put the question back: nothing is lost when the session has to be renewed.
          input.value = text;
          saveDraft(text);
        }
      }
    } finally {
      answer.meta.pending = false;
      state.controller = null;
      send.disabled = false;
      stop.disabled = true;
      log.removeAttribute("aria-busy");
      updateMessage(answerItem, answer);
      saveConversation(conversation);
      announce.textContent = answer.meta.error ? `The answer failed: ${answer.meta.error}` : answer.meta.stopped ? "Answer stopped." : "Answer finished.";
      input.focus();
    }
    if (answer.meta.requestId) {
      answer.meta.cost = await billedFor(answer.meta.requestId, answer.meta.usage, state.pricing, conversation.model);
      updateMessage(answerItem, answer);
      saveConversation(conversation);
      window.dispatchEvent(new CustomEvent("r3mes:balance-changed"));
      showBalance();
    }
  }

  async function stream(conversation, answer, controller, redraw) {
    const messages = conversation.messages
      .filter((m) => m !== answer && !(m.meta && m.meta.error))
      .map((m) => ({ role: m.role, content: m.content }));
    const response = await request("/v1/chat/completions", {
      method: "POST",
      raw: true,
      signal: controller.signal,
      body: {
        model: conversation.model,
        messages,
        stream: true,
        stream_options: { include_usage: true },
        max_tokens: MAX_TOKENS,
      },
    });
    answer.meta.route = response.headers.get("x-r3mes-route") || "";
    answer.meta.node = response.headers.get("x-r3mes-node") || "";
    answer.meta.score = response.headers.get("x-r3mes-route-score") || "";
    answer.meta.fallback = response.headers.get("x-r3mes-route-fallback") || "";
    answer.meta.version = response.headers.get("x-r3mes-adapter-version") || "";
    answer.meta.requestId = response.headers.get("x-request-id") || "";
    showRoute(answer.meta);
    redraw();
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let last = 0;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let cut;
      while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const eventText = buffer.slice(0, cut);
        buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
        handleEvent(eventText, answer);
      }
      const now = performance.now();
      if (now - last > 50) {
        redraw();
        last = now;
      }
    }
    if (buffer.trim()) handleEvent(buffer, answer);
  }

  function handleEvent(eventText, answer) {
    const data = eventText
      .split(/\r?\n/)
      .filter((line) => line.startsWith("data:"))
      .map((line) => line.slice(5).trimStart())
      .join("\n");
    if (!data || data === "[DONE]") return;
    let chunk;
    try {
      chunk = JSON.parse(data);
    } catch {
      return;
    }
    if (chunk.error) throw new ApiError(502, chunk.error.code || "upstream_error", chunk.error.message || "the serving node failed");
    if (chunk.id) answer.meta.id = chunk.id;
    if (chunk.model) answer.meta.served = chunk.model;
    for (const choice of chunk.choices || []) {
      if (choice.delta?.content) answer.content += choice.delta.content;
      if (choice.finish_reason) answer.meta.finish = choice.finish_reason;
    }
    if (chunk.usage) answer.meta.usage = chunk.usage;
  }

  function showRoute(meta) {
    const parts = [];
    if (meta.route) parts.push(`router chose ${meta.route}${meta.score ? ` (score ${meta.score})` : ""}`);
    if (meta.fallback && meta.fallback !== "false" && meta.fallback !== "0") parts.push(`fallback: ${meta.fallback}`);
    if (meta.version) parts.push(`adapter v${meta.version}`);
    if (meta.node) parts.push(`served by ${meta.node}`);
    routeInfo.textContent = parts.length ? `Route: ${parts.join(" · ")}` : "";
  }

  loadModelsAndOpen();

  async function loadModelsAndOpen() {
    const latest = listConversations()[0];
    state.conversation = latest ? getConversation(latest.id) : newConversation("auto");
    renderHistory();
    renderMessages();
    await Promise.all([loadModels(), showBalance()]);
  }

  return () => state.controller?.abort();
}

function messageItem(message) {
  const item = h("li", { class: `message ${message.role}` });
  updateMessage(item, message);
  return item;
}

function updateMessage(item, message) {
  const who = message.role === "user" ? "You" : message.meta?.served || message.meta?.model || "Assistant";
  const body = h("div", { class: "message-body" });
  if (message.role === "assistant") body.append(renderMarkdown(message.content));
  else body.textContent = message.content;
  const meta = message.meta || {};
  const notes = [];
  if (meta.pending) notes.push(h("span", { class: "typing" }, "streaming…"));
  if (meta.route) notes.push(h("span", {}, `route: ${meta.route}`));
  if (meta.node) notes.push(h("span", { title: meta.node }, `node: ${meta.node.slice(0, 14)}…`));
  if (meta.usage) notes.push(h("span", {}, `${fmtInt(meta.usage.prompt_tokens)} + ${fmtInt(meta.usage.completion_tokens)} tokens`));
  if (meta.cost !== undefined && meta.cost !== null) notes.push(h("span", { class: "cost" }, `cost: ${fmtInt(meta.cost)} ${Number(meta.cost) === 1 ? "credit" : "credits"}`));
  if (meta.stopped) notes.push(h("span", { class: "stopped" }, "stopped"));
  if (meta.error) notes.push(h("span", { class: "error", role: "alert" }, meta.error));
  replace(item, h("div", { class: "message-who" }, who), body, notes.length ? h("div", { class: "message-meta" }, notes) : null);
}

