"""publish: images to and from Google Cloud Storage.

The GCS client, the bucket layout (channels, object names, index.json), the checksum-aware uploader,
listing and download, and `kiln release`.

Imports: `kiln.core`, `kiln.config`, `kiln.build`.
"""
