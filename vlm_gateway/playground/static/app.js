// The gateway's playground: plain browser JavaScript, no dependencies, no build step.
// It calls the gateway's own API on this origin: GET /v1/models, POST /v1/chat/completions (streamed, SSE)
// and POST /v1/chat/completions/render, with the API key typed above (kept in localStorage).
"use strict";

(function () {
  const KEY_STORE = "vlm-gateway.playground.api-key";
  const MODEL_STORE = "vlm-gateway.playground.model";
  const $ = (id) => document.getElementById(id);

  const images = []; // {url, name}: data URIs (files) or links, sent in this order
  let running = null; // the AbortController of the request in flight

  // --- errors ------------------------------------------------------------------------------------

  const HINTS = {
    401: "Check the API key at the top of the page.",
    403: "This key may not do that.",
    404: "Pick another model, or check the key's model list.",
    413: "The request is too large: try fewer or smaller images.",
    429: "Rate limited: wait a moment and try again.",
    503: "The model's engine is not ready yet: retry shortly.",
  };

  class ApiError extends Error {
    constructor(status, message, type, code) {
      super(message);
      this.status = status;
      this.type = type || "";
      this.code = code || "";
    }
  }

  // An error response as an ApiError: OpenAI's body {"error": {"message", "type", "param", "code"}}, or text.
  async function apiError(res) {
    const text = await res.text();
    let message = text || res.statusText;
    let type = "";
    let code = "";
    try {
      const body = JSON.parse(text);
      const err = typeof body.error === "object" && body.error !== null ? body.error : body;
      message = err.message || (typeof body.error === "string" ? body.error : "") || body.detail || message;
      type = err.type || "";
      code = err.code || "";
    } catch (_) { /* not JSON: the text itself */ }
    return new ApiError(res.status, message, type, code);
  }

  function showError(err) {
    const box = $("error");
    box.textContent = "";
    const title = document.createElement("strong");
    let detail;
    if (err instanceof ApiError) {
      const kind = err.code || err.type;
      title.textContent = `${err.status ? `Error ${err.status}` : "The answer failed"}${kind ? ` (${kind})` : ""}`;
      detail = err.message + (HINTS[err.status] ? `\n${HINTS[err.status]}` : "");
    } else if (err instanceof TypeError) { // fetch itself failed
      title.textContent = "Cannot reach the gateway";
      detail = String(err.message || err);
    } else {
      title.textContent = "Error";
      detail = String(err.message || err);
    }
    box.append(title, document.createTextNode(detail));
    box.hidden = false;
  }

  function clearError() {
    $("error").hidden = true;
    $("error").textContent = "";
  }

  // --- API ---------------------------------------------------------------------------------------

  function headers() {
    const key = $("api-key").value.trim();
    const h = { "Content-Type": "application/json" };
    if (key) h.Authorization = `Bearer ${key}`;
    return h;
  }

  async function call(method, path, body, signal) {
    const res = await fetch(path, {
      method, headers: headers(), body: body === undefined ? undefined : JSON.stringify(body), signal,
    });
    if (!res.ok) throw await apiError(res);
    return res;
  }

  // --- models ------------------------------------------------------------------------------------

  // Each key stroke reloads the list; only the latest load fills it (an earlier answer may come last), and
  // it clears only the error a load showed (never, say, a refused request's message shown meanwhile).
  let modelLoads = 0;
  let modelsFailed = false;

  async function loadModels() {
    const select = $("model");
    const load = ++modelLoads;
    let list = null;
    let failure = null;
    try {
      list = await (await call("GET", "/v1/models")).json();
    } catch (err) {
      failure = err;
    }
    if (load !== modelLoads) return;
    const wanted = select.value || localStorage.getItem(MODEL_STORE) || "";
    select.textContent = "";
    if (failure) {
      select.add(new Option("(no models: see the error)", ""));
      showError(failure);
      modelsFailed = true;
      return;
    }
    for (const m of list.data) {
      const option = new Option(m.family ? `${m.id} · ${m.family}` : m.id, m.id);
      option.title = `up to ${m.max_images} image(s)` + (m.context_length ? `, ${m.context_length} tokens` : "");
      select.add(option);
    }
    if (!list.data.length) select.add(new Option("(no models)", ""));
    if ([...select.options].some((o) => o.value === wanted)) select.value = wanted;
    if (modelsFailed) clearError();
    modelsFailed = false;
  }

  // --- images ------------------------------------------------------------------------------------

  function renderImages() {
    const list = $("images");
    list.textContent = "";
    images.forEach((image, i) => {
      const item = document.createElement("li");
      const img = document.createElement("img");
      img.src = image.url;
      img.alt = image.name;
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = image.name;
      name.title = image.name;
      const remove = document.createElement("button");
      remove.type = "button";
      remove.textContent = "×";
      remove.title = "Remove";
      remove.setAttribute("aria-label", `Remove ${image.name}`);
      remove.addEventListener("click", () => { images.splice(i, 1); renderImages(); });
      item.append(img, name, remove);
      list.append(item);
    });
  }

  function addFile(file) {
    if (!file.type.startsWith("image/")) {
      showError(new Error(`${file.name || "that file"} is not an image`));
      return;
    }
    const reader = new FileReader();
    reader.onload = () => { images.push({ url: reader.result, name: file.name || "pasted image" }); renderImages(); };
    reader.onerror = () => showError(new Error(`cannot read ${file.name}`));
    reader.readAsDataURL(file);
  }

  function addUrl(raw) {
    const url = raw.trim();
    if (!url) return false;
    if (!/^(https?:\/\/|data:image\/)/i.test(url)) {
      showError(new Error("an image link starts with https://, http:// or data:image/"));
      return false;
    }
    const name = url.startsWith("data:") ? "linked data URI" : (url.split(/[?#]/)[0].split("/").pop() || url);
    images.push({ url, name });
    renderImages();
    return true;
  }

  function addFiles(files) {
    for (const file of files) addFile(file);
  }

  // --- the request -------------------------------------------------------------------------------

  function requestBody() {
    const model = $("model").value;
    if (!model) throw new Error("pick a model first (enter a valid API key to list them)");
    const text = $("prompt").value;
    const detail = $("detail").value;
    const content = images.map((image) => ({ type: "image_url", image_url: { url: image.url, detail } }));
    if (text.trim()) content.push({ type: "text", text });
    if (!content.length) throw new Error("type a prompt or add an image");
    const body = { model, messages: [{ role: "user", content }] };
    const maxTokens = parseInt($("max-tokens").value, 10);
    if (maxTokens > 0) body.max_tokens = maxTokens;
    const temperature = $("temperature").value.trim();
    if (temperature !== "") body.temperature = Number(temperature);
    return body;
  }

  function setStat(id, value) { $(id).textContent = value; }

  function resetStats() {
    for (const id of ["ttft", "total-time", "prompt-tokens", "image-tokens", "completion-tokens", "total-tokens"]) {
      setStat(id, "–");
    }
    $("image-tokens-row").hidden = false;
  }

  function showUsage(usage) {
    setStat("prompt-tokens", usage.prompt_tokens);
    const details = usage.prompt_tokens_details;
    const hasImageTokens = details && typeof details.image_tokens === "number";
    $("image-tokens-row").hidden = !hasImageTokens;
    if (hasImageTokens) setStat("image-tokens", details.image_tokens);
    setStat("completion-tokens", usage.completion_tokens);
    setStat("total-tokens", usage.total_tokens);
  }

  const ms = (t) => (t < 1000 ? `${Math.round(t)} ms` : `${(t / 1000).toFixed(2)} s`);

  function setBusy(busy) {
    $("send").disabled = busy;
    $("show-prompt").disabled = busy;
    $("stop").disabled = !busy;
  }

  // Server-sent events from a fetch body: calls onData with each event's data.
  async function readEvents(res, onData) {
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
      const events = buffer.split(/\r?\n\r?\n/);
      buffer = done ? "" : events.pop();
      for (const event of events) {
        const data = event.split(/\r?\n/).filter((l) => l.startsWith("data:"))
          .map((l) => l.slice(5).replace(/^ /, "")).join("\n");
        if (data && onData(data) === false) return;
      }
      if (done) return;
    }
  }

  async function send() {
    clearError();
    let body;
    try { body = requestBody(); } catch (err) { showError(err); return; }
    body.stream = true;
    body.stream_options = { include_usage: true };
    const answer = $("answer");
    answer.textContent = "";
    resetStats();
    $("status").textContent = "waiting…";
    running = new AbortController();
    setBusy(true);
    const start = performance.now();
    let first = null;
    let finish = "";
    try {
      const res = await call("POST", "/v1/chat/completions", body, running.signal);
      $("status").textContent = "streaming…";
      await readEvents(res, (data) => {
        if (data === "[DONE]") return false;
        const chunk = JSON.parse(data);
        if (chunk.error) {
          const e = chunk.error;
          throw new ApiError(0, e.message || String(e), e.type, e.code); // mid-stream: no HTTP status
        }
        for (const choice of chunk.choices || []) {
          const piece = (choice.delta && choice.delta.content) || "";
          if (piece) {
            if (first === null) {
              first = performance.now() - start;
              setStat("ttft", ms(first));
            }
            answer.append(piece);
          }
          if (choice.finish_reason) finish = choice.finish_reason;
        }
        if (chunk.usage) showUsage(chunk.usage);
        return true;
      });
      setStat("total-time", ms(performance.now() - start));
      $("status").textContent = finish ? `done (${finish})` : "done";
    } catch (err) {
      setStat("total-time", ms(performance.now() - start));
      if (err.name === "AbortError") {
        $("status").textContent = "stopped";
      } else {
        $("status").textContent = "failed";
        showError(err);
      }
    } finally {
      running = null;
      setBusy(false);
    }
  }

  async function showPrompt() {
    clearError();
    let body;
    try { body = requestBody(); } catch (err) { showError(err); return; }
    setBusy(true);
    $("stop").disabled = true;
    try {
      const r = await (await call("POST", "/v1/chat/completions/render", body)).json();
      $("prompt-text").textContent = r.prompt;
      $("prompt-meta").textContent = `${r.token_count} tokens · ${r.image_count} image${r.image_count === 1 ? "" : "s"}`;
      $("prompt-ids").textContent = JSON.stringify(r.token_ids);
      $("prompt-note").textContent = r.image_count && !r.images_expanded
        ? `Token ids as sent to the engine: each image is one ${r.features ? r.features.image_token : "image"} ` +
          `placeholder id (${r.image_tokens} in all), which the engine expands into the image's own tokens; ` +
          "an answer's usage counts them expanded."
        : r.image_count
          ? `Token ids as sent to the engine: the gateway has already expanded each image into its own tokens ` +
            `(${r.image_tokens} in all), as an answer's usage counts them.`
          : "Token ids as sent to the engine.";
      $("prompt-view").hidden = false;
    } catch (err) {
      showError(err);
    } finally {
      setBusy(false);
    }
  }

  // --- wiring ------------------------------------------------------------------------------------

  function init() {
    const key = $("api-key");
    key.value = localStorage.getItem(KEY_STORE) || "";
    let timer = null;
    key.addEventListener("input", () => {
      localStorage.setItem(KEY_STORE, key.value.trim());
      clearTimeout(timer);
      timer = setTimeout(loadModels, 400);
    });
    $("refresh-models").addEventListener("click", loadModels);
    $("model").addEventListener("change", () => localStorage.setItem(MODEL_STORE, $("model").value));

    const drop = $("drop");
    $("file").addEventListener("change", (e) => { addFiles(e.target.files); e.target.value = ""; });
    drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") $("file").click(); });
    // the whole page takes drops (a file dropped beside the zone must not replace the page)
    document.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
    document.addEventListener("dragleave", (e) => { if (!e.relatedTarget) drop.classList.remove("over"); });
    document.addEventListener("drop", (e) => {
      e.preventDefault();
      drop.classList.remove("over");
      const dt = e.dataTransfer;
      if (dt.files && dt.files.length) addFiles(dt.files);
      else addUrl((dt.getData("text/uri-list") || dt.getData("text/plain") || "").split(/\r?\n/)[0]);
    });
    document.addEventListener("paste", (e) => {
      const files = [...(e.clipboardData ? e.clipboardData.files : [])].filter((f) => f.type.startsWith("image/"));
      if (files.length) { e.preventDefault(); addFiles(files); }
    });
    const url = $("image-url");
    const addLink = () => { if (addUrl(url.value)) url.value = ""; };
    $("add-url").addEventListener("click", addLink);
    url.addEventListener("keydown", (e) => { if (e.key === "Enter") addLink(); });

    $("send").addEventListener("click", send);
    $("stop").addEventListener("click", () => running && running.abort());
    $("show-prompt").addEventListener("click", showPrompt);
    $("prompt").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey) && !$("send").disabled) { e.preventDefault(); send(); }
    });
    loadModels();
  }

  init();
})();
