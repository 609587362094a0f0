"""The generation server's web page: plain HTML + JS, no external resources (works offline).

A prompt box, an optional image upload (read in the browser and sent as base64 JSON), the
answer's options, and the answer: text and inline images (PNG data URLs) in order. The page's
state is in ``document.body.dataset.state`` (``idle`` / ``busy`` / ``done`` / ``error``), which
the browser test waits on.
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>dreamray: try a DreamLLM</title>
<style>
  body { font-family: system-ui, sans-serif; max-width: 52rem; margin: 2rem auto;
         padding: 0 1rem; color: #1d1d1f; }
  h1 { font-size: 1.4rem; margin-bottom: .2rem; }
  .model { color: #666; font-size: .9rem; margin-bottom: 1rem; word-break: break-all; }
  textarea { width: 100%; min-height: 5rem; font: inherit; box-sizing: border-box; }
  fieldset { border: 1px solid #ddd; margin: .8rem 0; }
  label { display: inline-block; margin: .25rem .8rem .25rem 0; font-size: .9rem; }
  input[type=number] { width: 6rem; }
  button { font: inherit; padding: .4rem 1.2rem; }
  #status { margin: .8rem 0; color: #555; min-height: 1.2rem; }
  #status.error { color: #b00020; }
  #answer { border-top: 1px solid #ddd; padding-top: 1rem; }
  #answer .text { white-space: pre-wrap; }
  #answer img { display: block; width: 256px; height: auto; margin: .6rem 0;
                image-rendering: pixelated; border: 1px solid #ccc; }
</style>
</head>
<body data-state="idle">
<h1>Try a DreamLLM</h1>
<div class="model" id="model"></div>
<form id="form">
  <textarea id="prompt" name="prompt" placeholder="Write a prompt; &lt;image&gt; marks where an
uploaded image goes (without it, uploads go first)."></textarea>
  <div><label>Images <input id="images" name="images" type="file" multiple></label></div>
  <fieldset>
    <legend>Options</legend>
    <label>Answer <select id="mode" name="mode">
      <option value="auto">auto</option><option value="interleaved">interleaved</option>
      <option value="text">text only</option><option value="image">image only</option>
    </select></label>
    <label>Max tokens <input id="max_new_tokens" type="number" min="0" value="64"></label>
    <label>Max images <input id="max_images" type="number" min="0" value="1"></label>
    <label>Seed <input id="seed" type="number" min="0" value="0"></label>
    <label>Steps <input id="steps" type="number" min="1" value="50"></label>
    <label>Guidance <input id="guidance" type="number" step="0.1" value="7.5"></label>
    <label>Image bias <input id="image_bias" type="number" step="0.5" value="0"></label>
  </fieldset>
  <button id="submit" type="submit">Generate</button>
</form>
<div id="status" role="status"></div>
<div id="answer"></div>
<script>
"use strict";
const $ = (id) => document.getElementById(id);

function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve({name: file.name, data: reader.result});
    reader.onerror = () => reject(new Error("cannot read " + file.name));
    reader.readAsDataURL(file);
  });
}

function number(id) {
  const value = $(id).value.trim();
  return value === "" ? null : Number(value);
}

function render(answer) {
  const box = $("answer");
  box.replaceChildren();
  for (const segment of answer.segments) {
    if (segment.type === "text") {
      const p = document.createElement("p");
      p.className = "text";
      p.textContent = segment.text;
      box.appendChild(p);
    } else {
      const img = document.createElement("img");
      img.src = segment.src;
      img.alt = "generated image";
      img.width = 256;
      box.appendChild(img);
    }
  }
  if (!answer.segments.length) box.textContent = "(empty answer: the model ended at once)";
}

async function submit(event) {
  event.preventDefault();
  const status = $("status");
  document.body.dataset.state = "busy";
  status.className = "";
  status.textContent = "generating...";
  $("submit").disabled = true;
  try {
    const images = await Promise.all(Array.from($("images").files).map(readFile));
    const body = {prompt: $("prompt").value, images: images, mode: $("mode").value};
    for (const id of ["max_new_tokens", "max_images", "seed", "steps", "guidance",
                      "image_bias"]) {
      const value = number(id);
      if (value !== null) body[id] = value;
    }
    const response = await fetch("generate", {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify(body),
    });
    const data = await response.json();
    if (!response.ok) throw new Error(data.error || ("HTTP " + response.status));
    render(data);
    status.textContent = data.mode + " answer in " + data.seconds + " s";
    document.body.dataset.state = "done";
  } catch (err) {
    status.className = "error";
    status.textContent = "error: " + err.message;
    document.body.dataset.state = "error";
  } finally {
    $("submit").disabled = false;
  }
}

$("form").addEventListener("submit", submit);
fetch("health").then((r) => r.json()).then((info) => {
  $("model").textContent = "model: " + info.model + " on " + info.device;
}).catch(() => {});
</script>
</body>
</html>
"""
