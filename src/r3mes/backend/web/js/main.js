// The dashboard's shell: header, navigation, hash routes, session banner.
// Routes: #/chat  #/login  #/account  #/network  #/address/<remes1...>

import { h, replace, toast } from "./dom.js";
import { loadMe, logout, markExpired, onSessionChange, session } from "./session.js";
import { chatPage } from "./pages/chat.js";
import { loginPage } from "./pages/login.js";
import { accountPage } from "./pages/account.js";
import { networkPage } from "./pages/network.js";
import { addressPage } from "./pages/address.js";

const ROUTES = {
  chat: { title: "Chat", page: chatPage },
  network: { title: "Network", page: networkPage },
  account: { title: "Account", page: accountPage },
  login: { title: "Log in", page: loginPage },
  address: { title: "Address", page: addressPage },
};
const NAV = ["chat", "network", "account"];

let cleanup = null;

function parseRoute() {
  const hash = location.hash || "#/chat";
  if (!hash.startsWith("#/")) return null; // "#main" (skip link) and the like: not a route
  const [name, ...rest] = hash.slice(2).split("/");
  const route = ROUTES[name] ? name : "chat";
  return { name: route, args: rest.map(decodeURIComponent) };
}

function renderNav(active) {
  const nav = document.getElementById("nav");
  const s = session();
  const links = NAV.map((name) =>
    h("a", { href: `#/${name}`, "aria-current": name === active ? "page" : null }, ROUTES[name].title),
  );
  const who =
    s.state === "in"
      ? h(
          "span",
          { class: "who" },
          h("span", { class: "who-label", title: s.me?.address || "" }, s.via === "api-key" ? "API key" : shortWho(s.me)),
          h("button", { type: "button", class: "link", onclick: onLogout }, "Log out"),
        )
      : h("a", { href: "#/login", "aria-current": active === "login" ? "page" : null }, "Log in");
  replace(nav, h("ul", {}, links.map((a) => h("li", {}, a)), h("li", { class: "nav-who" }, who)));
}

function shortWho(me) {
  const address = me?.address || "";
  return address ? `${address.slice(0, 9)}…${address.slice(-4)}` : "Logged in";
}

async function onLogout() {
  await logout();
  toast("Logged out.");
  location.hash = "#/login";
}

function renderBanner() {
  const banner = document.getElementById("banner");
  const s = session();
  if (s.state === "expired") {
    replace(
      banner,
      h(
        "div",
        { class: "banner warn", role: "alert" },
        "Your session has expired. Your chat and draft are kept in this browser. ",
        h("a", { href: "#/login" }, "Log in again"),
        " to continue.",
      ),
    );
  } else if (s.state === "error") {
    replace(banner, h("div", { class: "banner error", role: "alert" }, `The backend did not answer: ${s.error?.message || "unknown error"}`));
  } else {
    replace(banner);
  }
}

async function render() {
  const route = parseRoute();
  if (!route) return;
  if (cleanup) {
    try {
      cleanup();
    } catch {
      // a page's cleanup failing must not block navigation
    }
    cleanup = null;
  }
  const main = document.getElementById("main");
  const { title, page } = ROUTES[route.name];
  document.title = `${title} · R3MES`;
  renderNav(route.name);
  main.replaceChildren();
  main.dataset.page = route.name;
  cleanup = (await page(main, ...route.args)) || null;
}

function start() {
  window.addEventListener("hashchange", () => {
    const route = parseRoute();
    if (!route) return;
    // Moving focus to the new page's heading tells screen-reader users the page changed.
    render().then(() => document.querySelector("#main h1")?.focus());
  });
  window.addEventListener("r3mes:auth-expired", () => markExpired());
  // Charts take their colours when drawn: redraw the page when the system theme changes.
  matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => render());
  document.getElementById("skip").addEventListener("click", (event) => {
    event.preventDefault();
    const heading = document.querySelector("#main h1") || document.getElementById("main");
    heading.focus();
  });
  onSessionChange(() => {
    renderNav(parseRoute()?.name || "chat");
    renderBanner();
  });
  loadMe().finally(render);
}

start();
