"""The review page's stylesheet and its one inline script (allowed by a CSP hash, nothing else).

The script copies a command (a row's restore command, or the decisions script) to the clipboard,
and gathers the decisions a person picks (radio buttons, one group a file) into the decisions
script: the header in the script box's data-head, then the data-cmd of each picked choice, one
a line, in page order (exactly review.script.render). It only reads and joins those strings,
made and quoted by the page's writer (review/script.py), so no file name is ever part of the
script's code and none is put together in the browser. Without scripts the page still works:
a restore command is selected whole by one click (user-select: all); the choices, the
decisions box and the copy buttons are hidden.
"""
import base64
import hashlib

CSS = """
:root{--fg:#1d232a;--muted:#5b6670;--line:#d9dee3;--bg:#f6f7f9;--card:#fff;--ok:#2f7d4f;--bad:#c0392b;--warn:#b9770e;--accent:#2c5d8f}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:var(--fg);background:var(--bg)}
header{background:#1f3347;color:#fff;padding:18px 28px}
header h1{margin:0 0 4px;font-size:22px;font-weight:600}
header .meta{color:#c9d6e2;font-size:13px;word-break:break-all}
header .meta b{color:#fff;font-weight:600}
main{padding:18px 28px 40px;max-width:1500px}
nav{margin:4px 0 18px;display:flex;flex-wrap:wrap;gap:8px}
nav a{color:var(--accent);text-decoration:none;border:1px solid var(--line);background:var(--card);border-radius:14px;padding:2px 11px;font-size:13px}
nav a:hover{background:#eaf1f8}
h2{font-size:18px;margin:26px 0 8px;padding-bottom:4px;border-bottom:2px solid var(--line)}
h2 .count{color:var(--muted);font-weight:400}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:8px 14px;min-width:108px}
.card .n{font-size:22px;font-weight:650;font-variant-numeric:tabular-nums}
.card .k{color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.card.bad .n{color:var(--bad)} .card.good .n{color:var(--ok)} .card.warn .n{color:var(--warn)}
.note{color:var(--muted);margin:6px 0 10px}
.note.warn{color:var(--warn)}
table.rows{border-collapse:collapse;width:100%;background:var(--card);border:1px solid var(--line)}
table.rows th{text-align:left;font-size:12px;color:var(--muted);font-weight:600;text-transform:uppercase;letter-spacing:.03em;padding:6px 8px;border-bottom:1px solid var(--line);background:#fafbfc}
table.rows td{padding:6px 8px;border-bottom:1px solid #eceff2;vertical-align:top}
table.rows tr:last-child td{border-bottom:0}
table.rows{table-layout:fixed}
th.c-img{width:114px} th.c-cls{width:9%} th.c-score{width:170px} th.c-where{width:32%}
.thumb img{display:block;width:96px;height:96px;object-fit:contain;background:#20262c;border-radius:4px}
.thumb img.px{image-rendering:pixelated}
.ph{width:96px;height:96px;border-radius:4px;background:repeating-linear-gradient(45deg,#eef0f3,#eef0f3 6px,#e3e7eb 6px,#e3e7eb 12px);color:var(--muted);font-size:11px;display:flex;align-items:center;justify-content:center;text-align:center;padding:4px}
.path{font-family:ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:13px;overflow-wrap:anywhere}
.sub{color:var(--muted);font-size:12px;overflow-wrap:anywhere}
.score{font-variant-numeric:tabular-nums;white-space:nowrap;font-weight:600}
.score.over{color:var(--bad)} .score.under{color:var(--ok)}
.meter{height:5px;background:#e8ebee;border-radius:3px;margin-top:4px;width:110px;position:relative;overflow:hidden}
.meter span{position:absolute;left:0;top:0;bottom:0;background:#5b8fc7}
.over+.meter span{background:var(--bad)}
.meter i{position:absolute;top:0;bottom:0;width:2px;background:#333}
.action{white-space:nowrap}
details.page{margin:0 0 10px}
details.page>summary{cursor:pointer;color:var(--accent);margin:4px 0 8px;font-weight:600}
.hists{display:flex;flex-wrap:wrap;gap:12px}
.hcard{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:8px 10px}
.hcard h3{margin:0 0 2px;font-size:14px;word-break:break-all}
.hcard .sub{margin-bottom:2px}
svg.hist .plot{fill:#fafbfc;stroke:#e1e5e9}
svg.hist .ovf{fill:#eceff3}
svg.hist .bar{fill:#5b8fc7}
svg.hist .bar.over{fill:#d9534f}
svg.hist .thr{stroke:#222;stroke-width:1.5;stroke-dasharray:4 3}
svg.hist text{font:10px system-ui,sans-serif;fill:#5b6670}
svg.hist .thr-label{fill:#222}
footer{color:var(--muted);font-size:12px;margin-top:30px}
.restore{display:flex;gap:6px;align-items:flex-start;margin-top:5px}
.restore code{display:block;font:12px ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace;background:#f1f3f5;border:1px solid var(--line);border-radius:4px;padding:2px 6px;white-space:pre;overflow-wrap:normal;word-break:normal;overflow-x:auto;min-width:0;user-select:all;-webkit-user-select:all;flex:1}
button.copy{display:none;font-size:12px;border:1px solid var(--line);background:var(--card);color:var(--accent);border-radius:4px;padding:1px 8px;cursor:pointer}
.js button.copy{display:inline-block}
.choices{display:none;border:0;margin:6px 0 0;padding:0;gap:2px 10px;flex-wrap:wrap}
.js .choices{display:flex}
.choices label{white-space:nowrap;font-size:12px;cursor:pointer;color:var(--accent)}
.choices input{margin:0 3px 0 0;vertical-align:-2px}
.badge{display:inline-block;font-size:11px;border-radius:9px;padding:0 7px;margin-left:4px;background:#e7f0e9;color:var(--ok);border:1px solid #c5dccb;white-space:nowrap}
.badge.review{background:#eaf1f8;color:var(--accent);border-color:#c9d9ea}
#decisions{display:none;background:var(--card);border:1px solid var(--line);border-left:4px solid var(--accent);border-radius:6px;padding:6px 12px;margin:12px 0}
.js #decisions{display:block}
#decisions h2{margin:4px 0 6px;border:0;font-size:16px}
.scriptbox{display:flex;gap:6px;align-items:flex-start}
.scriptbox textarea{flex:1;min-width:0;min-height:8em;resize:vertical;font:12px/1.4 ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace;white-space:pre;overflow-wrap:normal;word-break:normal;overflow-x:auto;background:#f8f9fa;border:1px solid var(--line);border-radius:4px;padding:4px 6px;color:var(--fg)}
.explain{background:var(--card);border:1px solid var(--line);border-left:4px solid var(--accent);border-radius:6px;padding:6px 12px;margin:12px 0}
input.view{position:absolute;opacity:0;pointer-events:none}
.viewsw{margin:4px 0 0;font-size:13px;color:var(--muted)}
.viewsw label{cursor:pointer;border:1px solid var(--line);background:var(--card);padding:2px 10px;border-radius:4px;color:var(--accent)}
#view-list:checked~.viewsw label[for=view-list],#view-grid:checked~.viewsw label[for=view-grid]{background:var(--accent);color:#fff;border-color:var(--accent)}
#view-grid:checked~section.files table.rows{display:block;border:0;background:none}
#view-grid:checked~section.files thead{display:none}
#view-grid:checked~section.files tbody{display:grid;grid-template-columns:repeat(auto-fill,minmax(118px,1fr));gap:8px}
#view-grid:checked~section.files tr{display:flex;flex-direction:column;background:var(--card);border:1px solid var(--line);border-radius:6px;padding:5px;min-width:0}
#view-grid:checked~section.files td{display:block;padding:0;border:0;min-width:0}
#view-grid:checked~section.files td.wide,#view-grid:checked~section.files td .sub{display:none}
#view-grid:checked~section.files .path{white-space:nowrap;overflow:hidden;text-overflow:ellipsis;font-size:11px;margin-top:3px}
#view-grid:checked~section.files .meter{width:100%}
#view-grid:checked~section.files .score{font-size:11px;overflow:hidden;text-overflow:ellipsis}
"""

# Marks the page as scripted (shows the copy buttons and the choices); copies the <code> or
# <textarea> beside a clicked copy button; rebuilds the decisions script when a choice changes.
SCRIPT = (
    "document.documentElement.classList.add('js');"
    "function copyFrom(b){var c=b.parentNode.querySelector('code,textarea');if(!c)return;"
    "var box=c.tagName==='TEXTAREA';var t=box?c.value:c.textContent;if(!t)return;"
    "function done(){b.textContent='copied';setTimeout(function(){b.textContent='copy'},1500)}"
    "function fallback(){if(box){c.focus();c.select()}else{var r=document.createRange();r.selectNodeContents(c);"
    "var s=window.getSelection();s.removeAllRanges();s.addRange(r)}try{if(document.execCommand('copy'))done()}catch(x){}}"
    "if(navigator.clipboard&&window.isSecureContext){navigator.clipboard.writeText(t).then(done,fallback)}"
    "else{fallback()}}"
    "function build(){var box=document.getElementById('script');if(!box)return;var lines=[];"
    "var cs=document.querySelectorAll('input.choice');for(var i=0;i<cs.length;i++){var c=cs[i];"
    "var cmd=c.getAttribute('data-cmd');if(c.checked&&cmd)lines.push(cmd)}"
    "box.value=lines.length?box.getAttribute('data-head')+lines.join('\\n')+'\\n':'';"
    "var n=document.getElementById('script-count');if(n)n.textContent=String(lines.length)}"
    "document.addEventListener('click',function(e){var b=e.target.closest?e.target.closest('button.copy'):null;"
    "if(b)copyFrom(b)});"
    "document.addEventListener('change',function(e){var t=e.target;"
    "if(t&&t.classList&&t.classList.contains('choice'))build()});"
    "document.addEventListener('DOMContentLoaded',build);"
)
SCRIPT_HASH = "sha256-" + base64.b64encode(hashlib.sha256(SCRIPT.encode("utf-8")).digest()).decode("ascii")
CSP = f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src '{SCRIPT_HASH}'"
