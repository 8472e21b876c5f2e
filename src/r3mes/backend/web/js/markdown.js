// Model output as Markdown, rendered safely: marked makes HTML text, DOMPurify turns it into a
// sanitised DOM fragment. The HTML string itself is never assigned to innerHTML.

import { Marked } from "../vendor/marked.esm.js";
import DOMPurify from "../vendor/purify.es.mjs";

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
const escapeHtml = (text) => String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);

// Raw HTML in model output is shown as the text it is, never parsed as markup: a model that
// writes "<div>" in an answer about HTML means the characters. DOMPurify still cleans what
// marked itself produces (links, code blocks) as a second line of defence.
const marked = new Marked({
  gfm: true,
  breaks: true,
  async: false,
  renderer: {
    html(token) {
      return escapeHtml(token.text);
    },
  },
});

const PURIFY = {
  RETURN_DOM_FRAGMENT: true,
  USE_PROFILES: { html: true },
  FORBID_TAGS: ["style", "img", "svg", "math", "form", "input", "button", "textarea", "select", "iframe", "video", "audio", "source", "picture"],
  FORBID_ATTR: ["style", "id", "name", "class", "srcset"],
  ALLOWED_URI_REGEXP: /^(?:https?:|mailto:|#)/i,
};

let hooked = false;

function hook() {
  if (hooked) return;
  hooked = true;
  DOMPurify.addHook("afterSanitizeAttributes", (node) => {
    if (node.tagName === "A") {
      node.setAttribute("rel", "noopener noreferrer nofollow");
      node.setAttribute("target", "_blank");
    }
    // A code block scrolls sideways when a line is wider than the message (a phone): focusable,
    // so it scrolls from the keyboard too (axe: scrollable-region-focusable).
    if (node.tagName === "PRE") node.setAttribute("tabindex", "0");
  });
}

/** A DocumentFragment for `text` (Markdown); safe to append anywhere. */
export function renderMarkdown(text) {
  hook();
  const html = marked.parse(String(text ?? ""));
  return DOMPurify.sanitize(html, PURIFY);
}
