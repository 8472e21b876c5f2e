// Conversations kept in this browser (localStorage): never sent anywhere but to the chat
// route with the next question. Drafts are kept too, so an expired session loses nothing.

const KEY = "r3mes.conversations";
const DRAFT = "r3mes.draft";
const MAX_CONVERSATIONS = 100;

function read() {
  try {
    const list = JSON.parse(localStorage.getItem(KEY) || "[]");
    return Array.isArray(list) ? list.filter((c) => c && typeof c.id === "string" && Array.isArray(c.messages)) : [];
  } catch {
    return [];
  }
}

function write(list) {
  try {
    localStorage.setItem(KEY, JSON.stringify(list.slice(0, MAX_CONVERSATIONS)));
  } catch {
    // Storage full or disabled: the conversation lives on in memory for this page.
  }
}

export function listConversations() {
  return read().sort((a, b) => (b.updated || 0) - (a.updated || 0));
}

export function getConversation(id) {
  return read().find((c) => c.id === id) || null;
}

export function newConversation(model) {
  const id = crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random().toString(16).slice(2)}`;
  return { id, title: "New chat", model, updated: Date.now(), messages: [] };
}

export function saveConversation(conversation) {
  const list = read().filter((c) => c.id !== conversation.id);
  conversation.updated = Date.now();
  const firstUser = conversation.messages.find((m) => m.role === "user");
  if (firstUser && conversation.title === "New chat") conversation.title = firstUser.content.slice(0, 60);
  list.unshift(conversation);
  write(list);
}

export function deleteConversation(id) {
  write(read().filter((c) => c.id !== id));
}

export function draft() {
  try {
    return localStorage.getItem(DRAFT) || "";
  } catch {
    return "";
  }
}

export function saveDraft(text) {
  try {
    if (text) localStorage.setItem(DRAFT, text);
    else localStorage.removeItem(DRAFT);
  } catch {
    // ignore: see write()
  }
}
