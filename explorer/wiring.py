"""Which event calls which handler, with which inputs and outputs: one line per event.

Page events get the size of the pictures on screen as their last input (``box_js``) and
answer refusals with a notice; the plain API endpoints (for ``gradio_client`` and tests) take
numbers instead of select events and raise errors.
"""
from __future__ import annotations

import gradio as gr

from .views import TABS


def wire(h, demo, model_events: dict, tab_js: str, box_js: str, url_js: str) -> None:
    c = h.c
    tab_comps = [comp for pair in c.tab_out.values() for comp in pair]
    main = [c.key, c.det_image, c.att_image, c.det_list, c.status, c.legend, c.link, c.url, c.notice,
            c.image_panel, c.example, *c.controls, c.follow, c.zoom, c.threshold, c.tabs]
    ckpt_out = [*main, *tab_comps, c.header, c.ckpt, c.open_anyway, c.prompt]
    page, api = h._page, h._api
    box = c.box

    def on(event, fn, inputs, outputs=main, model=False, tab=True, **kw):
        """A page event; then (a second step, so that the pictures arrive first) the tab on screen.
        A change of view takes a few tens of ms: no progress overlay (its flicker costs more)."""
        kw.setdefault("show_progress", "full" if model else "hidden")
        # A burst of clicks (or a dropdown firing twice) sends the last one once the running one is
        # done: a page never asks for a second model run while one is in flight (explorer.serving).
        kw.setdefault("trigger_mode", "always_last")
        dep = event(page(fn, outputs), [c.key, *inputs, box], outputs, api_name=False, js=box_js,
                    **(model_events if model else {}), **kw)
        if tab:
            dep.success(page(h.refresh_tab, tab_comps), [c.key], tab_comps, api_name=False, show_progress="hidden")

    # ---- the page ----
    # Dropdowns listen to .select: Gradio 6.31's Dropdown fires .input twice per pick (the second
    # would be refused as a second model run of the page, explorer.serving).
    on(c.upload.upload, h.detect, [c.upload, c.threshold], model=True, preprocess=False, show_progress="full")
    on(c.example.select, h.detect_example, [c.example, c.threshold], model=True, show_progress="full")
    for group, gal in c.galleries:
        on(gal.select, h.on_gallery, [gr.State(group), c.threshold], model=True, show_progress="full")
    on(c.prompt.submit, h.set_prompt, [c.prompt], model=True, show_progress="full")
    on(c.det_list.select, h.select_detection, [c.det_list])
    on(c.det_image.select, h.on_det_select, [])
    on(c.att_image.select, h.on_att_select, [])
    # .input fires while a slider is dragged or typed into; always_last drops stale redraws.
    on(c.threshold.input, h.set_threshold, [c.threshold], trigger_mode="always_last")
    for ctl in c.controls:
        on(ctl.input, h.set_view, c.controls, trigger_mode="always_last")
    on(c.follow.select, h.follow_head, [c.follow])
    on(c.zoom.input, h.set_zoom, [c.zoom])
    for tab_id, (note, body) in c.tab_out.items():
        if TABS[tab_id].click is not None:
            on(body.select, h.on_tab_image_select, [gr.State(tab_id)])
        if tab_id in c.actions:
            choice, button = c.actions[tab_id]
            on(button.click, h.run_action, [gr.State(tab_id), choice], outputs=[note, body],
               model=TABS[tab_id].action.model, tab=False, show_progress="full")
    # No select listener on tabs (see explorer.page): the change event, the id read from the DOM.
    # One event for every tab; a custom tab's opener (h.openers) answers in the same response.
    tab_outputs = [c.key, *tab_comps, c.url, c.link, c.notice]
    for opener in h.openers.values():
        tab_outputs += [o for o in opener.outputs if o not in tab_outputs]
    dep = c.tabs.change(page(h.show_tab, tab_outputs), [c.key, c.text_in, box], tab_outputs, api_name=False,
                        js=tab_js, trigger_mode="always_last", show_progress="hidden")
    for opener in h.openers.values():
        if opener.js:
            dep = dep.then(None, None, None, js=opener.js)
    on(c.ckpt.select, h.set_checkpoint, [c.ckpt], outputs=ckpt_out, model=True, tab=False, show_progress="full")
    on(c.open_anyway.click, h.open_anyway, [], outputs=ckpt_out, model=True, tab=False, show_progress="full")
    c.url.change(None, [c.url], None, js=url_js)
    # Not in the model's queue: a page would count its own load as an image being processed (and
    # be refused its first click); a link's example runs under the model's lock all the same.
    demo.load(page(h.restore, main + tab_comps), [c.key, box], main + tab_comps, api_name=False, js=box_js)

    # ---- plain API endpoints (the select events above wrap the same calls) ----
    out = [c.key, c.det_image, c.att_image, c.det_list, c.status, c.notice, c.legend]
    x, y, text = c.x_in, c.y_in, c.text_in

    def endpoint(fn, inputs, name, outputs=out, model=False, **kw):
        c.api.click(api(fn, outputs), [c.key, *inputs], outputs, api_name=name,
                    **(model_events if model else {}), **kw)

    endpoint(h.detect, [c.upload, c.threshold], "detect", model=True, preprocess=False)
    endpoint(h.detect_example, [text, c.threshold], "detect_example", model=True)
    endpoint(h.set_prompt, [text], "set_prompt", model=True)
    endpoint(h.select_detection, [x], "select_detection")
    endpoint(h.click, [x, y], "click")
    endpoint(h.click_pixel, [x, y], "click_pixel")
    endpoint(h.click_view, [x, y], "click_view")
    endpoint(h.set_threshold, [x], "set_threshold")
    endpoint(h.set_view, c.controls, "set_view")
    endpoint(h.follow_head, [x], "follow_head")
    endpoint(h.set_zoom, [c.zoom], "set_zoom")
    endpoint(h.show_tab, [text], "show_tab", outputs=[c.key, *tab_comps])
    endpoint(h.click_tab, [text, x, y], "click_tab", outputs=out + [c.layer, c.heads])
    endpoint(h.export, [text], "export", outputs=[c.tab_out["export"][1]] if "export" in c.tab_out else [])
    endpoint(h.gradients, [], "gradients", outputs=list(c.tab_out.get("gradients", ())), model=True)
    endpoint(h.api_set_checkpoint, [text], "set_checkpoint", outputs=[c.key, c.header, c.notice, c.status], model=True)
