"""build: making images.

Rendering Packer templates, driving Packer, the bootstrap base disk, the declarative stage table and the
stage cache, and the pipeline that runs the stages and publishes a build directory.

Imports: `kiln.core`, `kiln.config`, `kiln.artifacts`, `kiln.vm`, `kiln.goss`.
"""
