"""The images the node runner runs are the ones scripts/build_images.sh builds."""

from tests.images.conftest import built_images  # noqa: F401 (a fixture shared with the image tests)
