#!/usr/bin/env bash
# Offline WordNet 3.0 for NLTK's METEOR (vt_ray.eval.metrics): NLTK downloads WordNet at run time, which we
# cannot; Debian ships the same database (packages in tools/apt_packages.txt). This installs them when
# /usr/share/wordnet is missing and builds an NLTK data dir at .venv/nltk_data/corpora/wordnet/ (NLTK refuses
# corpus paths outside nltk.data.path, so vt_ray.eval.wordnet puts .venv/nltk_data first on it).
# Idempotent: a complete data dir is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=/usr/share/wordnet
DEST=${VT_RAY_NLTK_DATA:-.venv/nltk_data}/corpora/wordnet
FILES=(data.noun data.verb data.adj data.adv index.noun index.verb index.adj index.adv
       noun.exc verb.exc adj.exc adv.exc)

if [ -f "$DEST/lexnames" ] && [ -f "$DEST/data.noun" ] && [ -f "$DEST/index.sense" ]; then
  exit 0
fi

# dpkg-query also catches "installed but files removed"; only -l status "ii" counts as installed.
mapfile -t PKGS < <(grep -v '^\s*\(#\|$\)' tools/apt_packages.txt)
missing=()
for p in "${PKGS[@]}"; do
  dpkg -l "$p" 2>/dev/null | grep -q "^ii\s\+$p\b" || missing+=("$p")
done
if [ ! -d "$SRC" ] || [ ${#missing[@]} -gt 0 ]; then
  if [ ${#missing[@]} -eq 0 ]; then missing=("${PKGS[@]}"); fi
  if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
  elif command -v sudo >/dev/null; then
    SUDO=(sudo)
  else
    echo "[wordnet] need root to apt-get install ${missing[*]} (not root, no sudo)" >&2
    exit 1
  fi
  echo "[wordnet] apt-get install ${missing[*]}"
  "${SUDO[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

tmp="$DEST.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp"
for f in "${FILES[@]}" index.sense; do
  if [ ! -f "$SRC/$f" ]; then
    echo "[wordnet] $SRC/$f missing after install (packages: ${PKGS[*]})" >&2
    exit 1
  fi
done
# Everything Debian ships (cntlist.rev gives Lemma.count(), the verb frames files are used by Synset.frame_ids).
cp "$SRC"/* "$tmp/"
# NLTK's reader needs lexnames, which Debian does not ship: the standard WordNet 3.0 list of the 45
# lexicographer files as "NN<TAB>name<TAB>syntactic category" (1 noun, 2 verb, 3 adjective, 4 adverb).
i=0
for entry in adj.all:3 adj.pert:3 adv.all:4 noun.Tops:1 noun.act:1 noun.animal:1 noun.artifact:1 \
    noun.attribute:1 noun.body:1 noun.cognition:1 noun.communication:1 noun.event:1 noun.feeling:1 \
    noun.food:1 noun.group:1 noun.location:1 noun.motive:1 noun.object:1 noun.person:1 noun.phenomenon:1 \
    noun.plant:1 noun.possession:1 noun.process:1 noun.quantity:1 noun.relation:1 noun.shape:1 noun.state:1 \
    noun.substance:1 noun.time:1 verb.body:2 verb.change:2 verb.cognition:2 verb.communication:2 \
    verb.competition:2 verb.consumption:2 verb.contact:2 verb.creation:2 verb.emotion:2 verb.motion:2 \
    verb.perception:2 verb.possession:2 verb.social:2 verb.stative:2 verb.weather:2 adj.ppl:3; do
  printf '%02d\t%s\t%s\n' "$i" "${entry%%:*}" "${entry##*:}" >> "$tmp/lexnames"
  i=$((i + 1))
done
rm -rf "$DEST"
mv "$tmp" "$DEST"
echo "[wordnet] NLTK WordNet ready at $DEST"
