"""artifacts: what a finished disk is turned into.

The OVA (OVF, stream-optimized VMDK, manifest), the live ISO / netboot / platform formats and the SPDX SBOM.

Imports: `kiln.core`, and `kiln.config` for the typed `Settings` a build passes. Nothing here boots a VM.
"""
