// API keys of a logged-in wallet: create (the key is shown once, with Copy), list, revoke.

import { ApiError, del, get, itemsOf, post } from "../api.js";
import { copyText, field, fmtTime, h, replace, table, toast } from "../dom.js";

const SCOPES = ["chat", "read"];

export async function renderKeys(section) {
  const name = h("input", { type: "text", name: "key-name", maxlength: "100", required: true, value: "dashboard" });
  const scopeBoxes = SCOPES.map((scope) => h("input", { type: "checkbox", name: "scope", value: scope, checked: true, id: `scope-${scope}` }));
  const expiry = h(
    "select",
    { name: "expiry" },
    h("option", { value: "" }, "never"),
    h("option", { value: "7" }, "in 7 days"),
    h("option", { value: "30" }, "in 30 days"),
    h("option", { value: "365" }, "in a year"),
  );
  const created = h("div", { class: "created-key", "aria-live": "polite" });
  const list = h("div", {});
  const form = h(
    "form",
    { class: "key-form", "aria-label": "Create an API key" },
    field("Key name", name),
    h("fieldset", {}, h("legend", {}, "Scopes"), scopeBoxes.map((box) => h("label", { for: box.id, class: "check" }, box, ` ${box.value}`))),
    field("Expires", expiry),
    h("button", { type: "submit", class: "primary" }, "Create key"),
  );
  replace(section, h("h2", { id: "keys-h" }, "API keys"), form, created, list);

  async function reload() {
    try {
      const body = await get("/api/keys");
      const keys = itemsOf(body);
      replace(
        list,
        table(
          "Your API keys",
          [
            { label: "Name", value: (k) => k.name },
            { label: "Key", value: (k) => h("code", {}, `${k.prefix}…`) },
            { label: "Scopes", value: (k) => k.scopes.join(", ") },
            { label: "Created", value: (k) => fmtTime(k.created_at) },
            { label: "Last used", value: (k) => fmtTime(k.last_used_at) },
            { label: "Expires", value: (k) => (k.expires_at ? fmtTime(k.expires_at) : "never") },
            { label: "Status", value: (k) => (k.revoked_at ? "revoked" : "active") },
            {
              label: "Actions",
              value: (k) =>
                k.revoked_at
                  ? ""
                  : h("button", { type: "button", class: "danger", "aria-label": `Revoke key ${k.name}`, onclick: () => revoke(k) }, "Revoke"),
            },
          ],
          keys,
          "No API keys yet.",
        ),
      );
    } catch (error) {
      replace(list, h("p", { class: "error" }, `Keys could not be listed: ${error.message}`));
    }
  }

  async function revoke(key) {
    if (!window.confirm(`Revoke the key "${key.name}"? Programs using it stop working at once.`)) return;
    try {
      await del(`/api/keys/${encodeURIComponent(key.id)}`);
      toast(`Key "${key.name}" revoked.`);
      await reload();
    } catch (error) {
      toast(`Revoke failed: ${error.message}`, "error");
    }
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const scopes = scopeBoxes.filter((b) => b.checked).map((b) => b.value);
    if (!scopes.length) {
      toast("Pick at least one scope.", "error");
      return;
    }
    const body = { name: name.value.trim() || "key", scopes };
    if (expiry.value) body.expires_in_days = Number(expiry.value);
    try {
      const made = await post("/api/keys", body);
      const secret = made.key;
      const code = h("code", { "data-testid": "new-key" }, secret);
      replace(
        created,
        h(
          "div",
          { class: "banner ok", role: "alert" },
          h("p", {}, "Your new key. It is shown only this once: copy it now."),
          h("div", { class: "command" }, code, h("button", { type: "button", onclick: () => copyText(secret) }, "Copy key")),
        ),
      );
      await reload();
    } catch (error) {
      toast(error instanceof ApiError ? `Key not created: ${error.message}` : String(error), "error");
    }
  });
  await reload();
}
