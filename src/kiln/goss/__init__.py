"""goss: checking images.

A strict renderer for Go's text/template as goss specs use it, goss's matchers, spec loading and evaluation
over SSH (testinfra), and `kiln verify`.

Imports: `kiln.core`, `kiln.config`, `kiln.vm`.
"""
