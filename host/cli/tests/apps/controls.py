#!/usr/bin/python3
"""A small GTK 3 application for the screen-and-input tests: a button, a text field, a password
field, a slider, a long list in a scrolled window, and a button that removes itself when
pressed. What happens to it is printed on standard output, one JSON object a line:
{"event": "ready"}, {"event": "clicked", "button": "Press me"}, {"event": "text", "field":
"name", "value": "..."}, {"event": "slider", "value": 42.0}, {"event": "scrolled", "value":
120.0}. Run by host/cli/tests/all/automation.rs under Xvfb, with the accessibility bus up."""

import json
import sys

import gi

gi.require_version("Gtk", "3.0")
from gi.repository import GLib, Gtk  # noqa: E402

GLib.set_prgname("capbridge-test-app")
GLib.set_application_name("capbridge-test-app")


def say(**event):
    print(json.dumps(event), flush=True)


window = Gtk.Window(title="capbridge test app")
window.set_default_size(420, 520)
window.move(100, 100)
window.connect("destroy", Gtk.main_quit)

box = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=8)
box.set_border_width(12)
window.add(box)

press = Gtk.Button(label="Press me")
press.connect("clicked", lambda b: say(event="clicked", button=b.get_label()))
box.pack_start(press, False, False, 0)

name = Gtk.Entry()
name.get_accessible().set_name("Name")
name.connect("changed", lambda e: say(event="text", field="name", value=e.get_text()))
box.pack_start(name, False, False, 0)

secret = Gtk.Entry()
secret.set_visibility(False)
secret.get_accessible().set_name("Password")
secret.connect("changed", lambda e: say(event="text", field="password", value=e.get_text()))
box.pack_start(secret, False, False, 0)

slider = Gtk.Scale.new_with_range(Gtk.Orientation.HORIZONTAL, 0, 100, 1)
slider.get_accessible().set_name("Level")
slider.connect("value-changed", lambda s: say(event="slider", value=s.get_value()))
box.pack_start(slider, False, False, 0)


def vanish(button):
    say(event="clicked", button=button.get_label())
    button.destroy()


gone = Gtk.Button(label="Vanish")
gone.connect("clicked", vanish)
box.pack_start(gone, False, False, 0)

rows = Gtk.ListBox()
for n in range(1, 61):
    rows.add(Gtk.Label(label=f"Row {n}"))
scrolled = Gtk.ScrolledWindow()
scrolled.set_min_content_height(200)
scrolled.add(rows)
scrolled.get_vadjustment().connect(
    "value-changed", lambda a: say(event="scrolled", value=a.get_value())
)
box.pack_start(scrolled, True, True, 0)

window.show_all()
GLib.idle_add(lambda: say(event="ready") and False)
Gtk.main()
sys.exit(0)
