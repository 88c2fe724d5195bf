// comfygate inside ComfyUI: who is logged in, with links to the account page and to log out.
// Loaded by the ComfyUI frontend as an extension (the gateway adds it to GET /extensions);
// ComfyUI itself is unmodified. Names are set as text, never as HTML. Bottom right, above the
// canvas controls.
const box = document.createElement('div');
box.id = 'comfygate-account';
box.style.cssText =
  'position:fixed;right:8px;bottom:56px;z-index:10000;font:12px/1.6 system-ui,sans-serif;' +
  'background:rgba(32,32,32,.85);color:#ccc;border:1px solid #444;border-radius:6px;padding:2px 8px;opacity:.6';
box.addEventListener('mouseenter', () => { box.style.opacity = '1'; });
box.addEventListener('mouseleave', () => { box.style.opacity = '.6'; });

function link(href, text) {
  const a = document.createElement('a');
  a.href = href;
  a.textContent = text;
  a.style.cssText = 'color:#8ab4ff;text-decoration:none';
  return a;
}

fetch('/comfygate/api/whoami', { credentials: 'same-origin', headers: { Accept: 'application/json' } })
  .then((r) => (r.ok ? r.json() : null))
  .then((me) => {
    if (!me || typeof me.username !== 'string') return;
    const name = document.createElement('span');
    name.textContent = me.username;
    box.append(name, ' · ', link('/comfygate/account', 'Account'), ' · ', link('/logout', 'Log out'));
    document.body.appendChild(box);
  })
  .catch(() => {});
