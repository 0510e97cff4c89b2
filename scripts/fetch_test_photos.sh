#!/usr/bin/env bash
# Download the public Microsoft "Kaggle Cats and Dogs" photos for the test suite.
#
#   scripts/fetch_test_photos.sh DEST     ->  DEST/PetImages/{Cat,Dog}/*.jpg
#
# The tests read real photos from $CATSDOGS_PETIMAGES (a folder with Cat/ and
# Dog/); on a fresh CI runner there are none, so ci.yml downloads them once and
# caches DEST. The original download holds a few broken files on purpose (see
# ../shared/datasets/README.md): the code under test must quarantine them.
set -euo pipefail

url="${PETIMAGES_URL:-https://download.microsoft.com/download/3/E/1/3E1C3F21-ECDB-4869-8368-6DEBA77B919F/kagglecatsanddogs_5340.zip}"
dest="${1:?usage: scripts/fetch_test_photos.sh DEST}"

if [[ -d "$dest/PetImages/Cat" && -d "$dest/PetImages/Dog" ]]; then
  echo "fetch_test_photos: already in $dest/PetImages"
  exit 0
fi
mkdir -p "$dest"
zip="$(mktemp --suffix=.zip)"
trap 'rm -f "$zip"' EXIT
curl --fail --silent --show-error --location --retry 3 --output "$zip" "$url"
unzip -q -o "$zip" 'PetImages/*' -d "$dest"
echo "fetch_test_photos: $(find "$dest/PetImages" -type f | wc -l) files in $dest/PetImages"
