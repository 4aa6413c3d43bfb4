"""Where the pretraining images come from, and what words describe each one.

Three public sources with licences that allow redistribution of derived weights and images:

- Open Clip Art (Debian ``openclipart-png``, public domain): ~8,000 PNGs in category folders whose
  file names are often descriptive but mixed with author names and Italian or French words;
- emoji artwork (npm ``emoji-datasource-twitter``: Twemoji, CC-BY 4.0; npm ``emoji-datasource-google``:
  Noto Color Emoji, Apache-2.0; names and groups from npm ``emoji-datasource``, MIT): two independent
  drawings of each of ~1,900 named concepts, a far wider vocabulary than clip-art folders;
- Fashion-MNIST (Debian ``dataset-fashion-mnist``, MIT): greyscale photographs of 10 clothing classes.

Each source yields :class:`Item` records: a specific name (from the file or emoji name), general
category names (from the folder or emoji subgroup), and a *group* key so that near-duplicates
(colour and black-and-white twins, ``_01``/``_02`` series, both styles of one emoji) are always held out
together.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

OPENCLIPART_ROOT = Path("/usr/share/openclipart/png")
FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")

# Folder prefix -> category names (specific first). Longest prefix wins. Folders mapped to () hold
# nothing nameable (gradients, patterns) and are skipped.
OPENCLIPART_FOLDERS: dict[str, tuple[str, ...]] = {
    "animals": ("animal",),
    "animals/birds": ("bird", "animal"),
    "animals/bugs": ("insect", "animal"),
    "animals/fish": ("fish", "sea animal", "animal"),
    "animals/dinosaurs": ("dinosaur", "animal"),
    "animals/amphibian": ("frog", "animal"),
    "animals/fantasy": ("dragon", "animal"),
    "animals/mammals": ("mammal", "animal"),
    "animals/mammals/housecats": ("cat", "mammal", "animal"),
    "animals/mammals/dogs": ("dog", "mammal", "animal"),
    "animals/mammals/horses": ("horse", "mammal", "animal"),
    "animals/mammals/bears": ("bear", "mammal", "animal"),
    "animals/mammals/big_cats": ("big cat", "mammal", "animal"),
    "food": ("food",),
    "food/fruit": ("fruit", "food"),
    "food/vegetables": ("vegetable", "food"),
    "food/desserts": ("dessert", "food"),
    "food/beverages": ("drink",),
    "food/breads_and_carbs": ("bread", "food"),
    "food/meats_and_eggs": ("meat", "food"),
    "food/dairy": ("cheese", "food"),
    "plants": ("plant",),
    "plants/flowers": ("flower", "plant"),
    "plants/trees": ("tree", "plant"),
    "transportation": ("traffic sign",),
    "transportation/vehicles": ("vehicle",),
    "transportation/boating": ("boat",),
    "transportation/roadsigns": ("traffic sign",),
    "transportation/aiga-symbols": ("symbol",),
    "buildings": ("building",),
    "buildings/homes": ("house", "building"),
    "buildings/furniture": ("furniture",),
    "recreation": ("toy",),
    "recreation/music": ("music",),
    "recreation/sports": ("sport",),
    "recreation/toys": ("toy",),
    "recreation/games": ("game",),
    "recreation/games/cards": ("playing card", "game"),
    "recreation/games/chess": ("chess piece", "game"),
    "recreation/holiday": ("holiday",),
    "recreation/party": ("party",),
    "recreation/religion": ("religious symbol", "symbol"),
    "recreation/art": ("art",),
    "tools": ("tool",),
    "tools/weapons": ("weapon",),
    "tools/toys": ("toy",),
    "office": ("office supply",),
    "office/telephone": ("telephone",),
    "computer": ("computer",),
    "computer/icons": ("icon",),
    "computer/buttons": ("button",),
    "computer/folders": ("folder", "icon"),
    "computer/network": ("network",),
    "computer/hardware": ("computer",),
    "computer/connectors": ("plug",),
    "computer/games": ("game",),
    "computer/diagrams": ("diagram",),
    "electronics": ("electronics",),
    "electronics/bulb": ("light bulb",),
    "electronics/battery": ("battery",),
    "signs_and_symbols": ("symbol",),
    "signs_and_symbols/flags": ("flag",),
    "signs_and_symbols/clocks": ("clock",),
    "signs_and_symbols/weather": ("weather symbol", "symbol"),
    "signs_and_symbols/money": ("money",),
    "signs_and_symbols/hazard": ("warning sign", "symbol"),
    "signs_and_symbols/map_symbols": ("map symbol", "symbol"),
    "signs_and_symbols/awards": ("award",),
    "signs_and_symbols/led": ("digit",),
    "signs_and_symbols/disability": ("symbol",),
    "shapes": ("shape",),
    "shapes/stars": ("star", "shape"),
    "shapes/arrows": ("arrow", "shape"),
    "shapes/jigsaw": ("puzzle piece",),
    "shapes/flowchart": ("diagram",),
    "shapes/callouts": ("speech bubble",),
    "people": ("person",),
    "people/smilies": ("smiley face", "face"),
    "people/stickmen": ("stick figure", "person"),
    "people/clothing": ("clothing",),
    "people/clothing/hats": ("hat", "clothing"),
    "people/clothing/pantyhose": ("clothing",),
    "people/bodypart": ("body part",),
    "education": ("school",),
    "education/books": ("book",),
    "geography": ("map",),
    "geography/astronomy": ("planet",),
    "science": ("science",),
    "science/astronomy": ("planet",),
    "science/medicine": ("medicine",),
    "containers": ("box",),
    "decorations": ("decoration",),
    "logos": ("logo",),
    "buttons": ("button",),
    "unsorted": (),
    "special": (),
    "special/gradients": (),
    "special/patterns": (),
    "special/examples": (),
}
SKIP_FOLDERS = ("special", "unsorted/duplicates")
# Folders with hundreds of near-identical drawings: a random sample keeps them from dominating.
FOLDER_CAPS = {"shapes/stars": 100, "computer/icons": 250, "signs_and_symbols/flags": 120,
               "recreation/games/cards": 60}
EMOJI_FLAG_CAP = 80  # of 270 flag concepts: flags would otherwise be a tenth of all images

# Emoji subgroup -> category names; subgroups absent here use the group's last word.
EMOJI_SUBGROUPS: dict[str, tuple[str, ...]] = {
    "animal-bird": ("bird", "animal"),
    "animal-bug": ("insect", "animal"),
    "animal-marine": ("sea animal", "animal"),
    "animal-mammal": ("mammal", "animal"),
    "animal-reptile": ("reptile", "animal"),
    "animal-amphibian": ("frog", "animal"),
    "plant-flower": ("flower", "plant"),
    "plant-other": ("plant",),
    "food-fruit": ("fruit", "food"),
    "food-vegetable": ("vegetable", "food"),
    "food-prepared": ("meal", "food"),
    "food-asian": ("meal", "food"),
    "food-sweet": ("dessert", "food"),
    "drink": ("drink",),
    "dishware": ("dishware",),
    "transport-ground": ("vehicle",),
    "transport-water": ("boat",),
    "transport-air": ("aircraft",),
    "transport-sign": ("traffic sign", "symbol"),
    "place-building": ("building",),
    "place-map": ("map",),
    "place-geographic": ("landscape",),
    "place-other": ("place",),
    "place-religious": ("building",),
    "sky & weather": ("weather symbol",),
    "time": ("clock",),
    "hotel": ("hotel",),
    "clothing": ("clothing",),
    "musical-instrument": ("musical instrument", "music"),
    "music": ("music",),
    "sport": ("sport",),
    "game": ("game",),
    "event": ("holiday",),
    "award-medal": ("award",),
    "arts & crafts": ("art",),
    "book-paper": ("book",),
    "computer": ("computer",),
    "phone": ("telephone",),
    "light & video": ("light",),
    "tool": ("tool",),
    "office": ("office supply",),
    "writing": ("pen",),
    "household": ("household object",),
    "medical": ("medicine",),
    "science": ("science",),
    "money": ("money",),
    "mail": ("mail",),
    "lock": ("lock",),
    "sound": ("sound",),
    "other-object": ("object",),
    "country-flag": ("flag",),
    "flag": ("flag",),
    "subdivision-flag": ("flag",),
    "heart": ("heart", "symbol"),
    "emotion": ("symbol",),
    "cat-face": ("cat", "face"),
    "monkey-face": ("monkey", "face"),
    "body-parts": ("body part",),
    "arrow": ("arrow", "symbol"),
    "geometric": ("shape",),
    "zodiac": ("zodiac sign", "symbol"),
    "religion": ("religious symbol", "symbol"),
    "warning": ("warning sign", "symbol"),
    "alphanum": ("symbol",),
    "keycap": ("digit", "symbol"),
    "math": ("symbol",),
    "punctuation": ("symbol",),
    "currency": ("money", "symbol"),
    "gender": ("symbol",),
    "av-symbol": ("symbol",),
    "other-symbol": ("symbol",),
}
EMOJI_PREFIXES = {"face-": ("smiley face", "face"), "hand": ("hand", "body part"), "person": ("person",),
                  "family": ("person",)}
EMOJI_SKIP_SUBGROUPS = ("skin-tone",)

# A word in the specific name that makes an item a member of a finer category than its folder says
# (musical instruments sit in a "music" folder next to notes and records).
KEYWORD_CATEGORIES: dict[str, set[str]] = {
    "musical instrument": set("guitar cello harp piano drum drums flute trumpet trombone saxophone oboe horn "
                              "maracas dulcimer violin banjo accordion bagpipe clarinet tuba xylophone".split()),
    "aircraft": set("airplane plane aircraft helicopter jet airliner".split()),
    "telephone": set("telephone phone handphone cellular mobile".split()),
}

FASHION_CLASSES = ("t-shirt", "trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                   "ankle boot")
FASHION_CATEGORIES = {"sandal": "shoe", "sneaker": "shoe", "ankle boot": "shoe", "bag": "bag"}

# Open Clip Art file names mix English object words with author names and Italian/French words. A word
# is kept only if it is in the emoji vocabulary (a list of concrete English words), in a category name,
# in this list, or translated by FOREIGN_WORDS.
EXTRA_WORDS = set("""
cello harp oboe flute trumpet trombone saxophone guitar piano drum drums maracas record jukebox gramophone
clef note notes headphones microphone boombox dulcimer horn cake pie candy cone cookie muffin lollipop flan
waffle pudding icecream glass mug teapot teacup cup milk juice coffee tea lemonade soda bottle can
ball racket bat glove helmet pitch target surfboard skates yoga dartboard binoculars blocks boomerang robot
duck teddy cube wagon axe anvil hammer broom bucket cog compass drill key lock padlock magnifying lens rake
saw pliers wrench screwdriver shovel scissors envelope folder calculator clipboard stamp crayon eraser
feather lamp mailbox megaphone laptop keyboard mouse printer monitor joystick router scanner server modem
battery bulb lightbulb camera cassette antenna transistor satellite dish resistor capacitor diode cd
sailboat sailing knot anchor bus car truck tractor tank airplane aircraft plane bicycle motorcycle train
tram lorry jeep taxi ambulance helicopter rocket ship boat canoe yacht submarine lighthouse
house home villa chalet cottage castle church tower bridge barn tent
apple banana bananas grape grapes lemon lime orange pear peach plum cherry cherries melon watermelon
pineapple strawberry pepper corn onion garlic radish salad carrot potato tomato mushroom
flower flowers rose tulip daisy daffodil magnolia lotus sunflower geranium bouquet cactus leaf tree palm
fern evergreen wreath clock alarm hourglass sandglass sword knife gun rifle bomb shield arrow bow
book books newspaper bible diary moon sun mars jupiter saturn planet star cloud rain snow storm lightning
icicle drop hat cap fedora sombrero crown turban sunglasses shoe shoes boot mitten chain ring rings
dog puppy cat kitten horse pony bear elephant monkey pig sheep goat cow bull deer camel giraffe fox rabbit
bunny squirrel mouse rat bat whale dolphin seal kangaroo lion tiger leopard panther zebra hippo wolf
raccoon beaver chipmunk hamster baboon orangutan gorilla antelope penguin eagle duck swan owl crow dove
gull parrot rooster hen chicken flamingo cormorant butterfly bee wasp ant spider ladybug mosquito fly
dragonfly grasshopper snail beetle fish seahorse shark crab octopus angelfish dinosaur frog turtle snake
smiley face skull person man woman boy girl child baby king queen soldier pirate clown cowboy
balloon balloons fireworks gift present candle
""".split())
FOREIGN_WORDS = {
    "gatto": "cat", "cane": "dog", "cavallo": "horse", "orso": "bear", "ours": "bear", "elefante": "elephant",
    "coniglio": "rabbit", "canguro": "kangaroo", "pecora": "sheep", "topo": "mouse", "antilope": "antelope",
    "stambecco": "goat", "aquila": "eagle", "acquila": "eagle", "cigno": "swan", "cigni": "swan",
    "gabbiano": "gull", "gufo": "owl", "civetta": "owl", "gallo": "rooster", "flamand": "flamingo",
    "farfalla": "butterfly", "farfalle": "butterfly", "ragno": "spider", "ragnetto": "spider",
    "lumaca": "snail", "zanzara": "mosquito", "moschito": "mosquito", "libellula": "dragonfly",
    "libellule": "dragonfly", "coccinella": "ladybug", "coccinelle": "ladybug", "coccinello": "ladybug",
    "abeille": "bee", "cavalletta": "grasshopper", "insetto": "insect", "pescetto": "fish",
    "prugna": "plum", "pera": "pear", "pasteque": "watermelon", "glace": "icecream", "gelato": "icecream",
    "torta": "cake", "gateau": "cake", "gauffre": "waffle", "pudim": "pudding", "tazza": "cup",
    "teiera": "teapot", "kubek": "mug", "lattine": "can", "birra": "beer", "caffe": "coffee",
    "bussola": "compass", "binocolo": "binoculars", "chiave": "key", "calamita": "magnet",
    "lente": "lens", "fiore": "flower", "fiori": "flower", "casa": "house", "libro": "book",
    "orologio": "clock", "clessidra": "hourglass", "pannocchia": "corn", "peperoncino": "pepper",
    "ravanello": "radish", "aglio": "garlic", "trattore": "tractor", "valigie": "suitcase",
    "stampante": "printer", "calcolatrice": "calculator", "lettera": "letter", "palloncini": "balloon",
    "pacco": "gift", "regalo": "gift", "sole": "sun", "cesto": "basket", "borsa": "bag",
    "macchina": "machine", "fotografica": "camera", "cinepresa": "camera", "cassetta": "cassette",
    "ferro": "iron", "baloon": "balloon", "couronne": "crown", "ballon": "ball", "ballon_": "ball",
}
STOP_WORDS = set("a an the of and with in on at to for by from or".split())


@dataclass
class Item:
    """One image and the words that describe it."""

    key: str                       # unique id, also the demo file stem
    source: str                    # "openclipart", "twemoji", "noto-emoji" or "fashion-mnist"
    path: str                      # file path, or "<idx file>#<index>" for Fashion-MNIST
    name: str                      # specific name ("" when the file name says nothing usable)
    categories: list[str] = field(default_factory=list)  # general names, most specific first
    group: str = ""                # near-duplicates share a group and are held out together
    labels: set[str] = field(default_factory=set)        # every nameable word, for demo-class rules


def words_of(text: str) -> list[str]:
    return [w for w in re.split(r"[^a-z]+", text.lower()) if w]


def emoji_vocabulary(emoji_meta: list[dict]) -> set[str]:
    vocab = set()
    for entry in emoji_meta:
        vocab.update(words_of(entry.get("name") or ""))
    return vocab - STOP_WORDS


def clean_file_name(stem: str, vocab: set[str]) -> str:
    """Keep the descriptive English words of a clip-art file name, in order, at most four."""
    kept: list[str] = []
    for word in words_of(stem):
        word = FOREIGN_WORDS.get(word, word)
        if word in STOP_WORDS or len(word) < 2:
            continue
        if word in vocab and word not in kept:
            kept.append(word)
    return " ".join(kept[:4])


def series_key(stem: str) -> str:
    """File-name series: drop digits, ``bw``/colour markers and single letters, so twins group together."""
    parts = [p for p in re.split(r"[^a-z]+", stem.lower()) if p]
    parts = [p for p in parts if p not in {"bw", "colour", "color", "r", "s", "alt", "simple"} and len(p) > 1]
    return "_".join(parts[:3]) or stem.lower()


def _folder_categories(rel_folder: str) -> tuple[str, ...] | None:
    parts = rel_folder.split("/")
    for cut in range(len(parts), 0, -1):
        prefix = "/".join(parts[:cut])
        if prefix in OPENCLIPART_FOLDERS:
            return OPENCLIPART_FOLDERS[prefix]
    return None


def openclipart_items(root: Path, vocab: set[str], rng) -> list[Item]:
    """All Open Clip Art PNGs, deduplicated by content (the same file sits in several folders)."""
    by_hash: dict[str, Item] = {}
    files = sorted(root.rglob("*.png"))
    per_folder: dict[str, list[Path]] = {}
    for path in files:
        rel_folder = str(path.parent.relative_to(root))
        if rel_folder.startswith(SKIP_FOLDERS):
            continue
        cap_folder = next((f for f in FOLDER_CAPS if rel_folder.startswith(f)), None)
        per_folder.setdefault(cap_folder or rel_folder, []).append(path)
    chosen: list[Path] = []
    for folder in sorted(per_folder):
        paths = per_folder[folder]
        cap = FOLDER_CAPS.get(folder)
        if cap is not None and len(paths) > cap:
            paths = sorted(rng.sample(paths, cap))
        chosen.extend(paths)
    for path in sorted(chosen):
        rel_folder = str(path.parent.relative_to(root))
        categories = _folder_categories(rel_folder) or ()
        digest = hashlib.md5(path.read_bytes()).hexdigest()
        name = clean_file_name(path.stem, vocab)
        if digest in by_hash:
            item = by_hash[digest]
            item.categories.extend(c for c in categories if c not in item.categories)
            item.labels.update(categories)
            continue
        if not name and not categories:
            continue
        key = "oca_" + re.sub(r"[^a-z0-9]+", "_", f"{rel_folder}_{path.stem}".lower()).strip("_")
        group = "oca:" + series_key(path.stem)
        labels = set(categories) | set(name.split())
        by_hash[digest] = Item(key, "openclipart", str(path), name, list(categories), group, labels)
    return list(by_hash.values())


EMOJI_STYLES = (("twemoji", "emoji-datasource-twitter", "twitter"), ("noto-emoji", "emoji-datasource-google", "google"))
OPENMOJI_STYLES = (("openmoji", "color"), ("openmoji-black", "black"))


def _hex_key(code: str) -> str:
    """Emoji code points without variation selectors: datasource and OpenMoji spell some differently."""
    return "-".join(p for p in code.upper().split("-") if p != "FE0F")


def openmoji_files(openmoji_root: Path | None) -> dict[str, dict[str, Path]]:
    """``{style: {hex key: svg path}}`` of OpenMoji's colour and black line drawings (empty without it)."""
    if openmoji_root is None:
        return {}
    found: dict[str, dict[str, Path]] = {}
    for source, folder in OPENMOJI_STYLES:
        svg_dir = openmoji_root / folder / "svg"
        found[source] = {_hex_key(path.stem): path for path in sorted(svg_dir.glob("*.svg"))}
    return found


def emoji_items(datasource_root: Path, meta: list[dict], rng, openmoji_root: Path | None = None) -> list[Item]:
    """Twemoji, Noto and (with ``openmoji_root``) OpenMoji colour and line drawings of every emoji concept.

    Base images only, no skin-tone variants. All drawings of one concept share a group, so they are held
    out together.
    """
    flags = sorted(e["unified"] for e in meta if e.get("subcategory", "").endswith("flag"))
    kept_flags = set(rng.sample(flags, min(EMOJI_FLAG_CAP, len(flags))))
    openmoji = openmoji_files(openmoji_root)
    items: list[Item] = []
    for entry in meta:
        sub = entry.get("subcategory", "")
        if sub in EMOJI_SKIP_SUBGROUPS or (sub.endswith("flag") and entry["unified"] not in kept_flags):
            continue
        name = " ".join(w for w in words_of(entry.get("name") or "") if w not in STOP_WORDS)
        if sub.endswith("flag"):
            name = name.replace(" flag", "").strip() + " flag"
        categories = EMOJI_SUBGROUPS.get(sub) or next(
            (cats for prefix, cats in EMOJI_PREFIXES.items() if sub.startswith(prefix)), (sub.split("-")[-1],))
        paths = []
        for source, package, style in EMOJI_STYLES:
            if not entry.get(f"has_img_{style}"):
                continue
            path = datasource_root / f"{package}" / "package" / "img" / style / "64" / entry["image"]
            if path.is_file():
                paths.append((source, path))
        for source, files in openmoji.items():
            if _hex_key(entry["unified"]) in files:
                paths.append((source, files[_hex_key(entry["unified"])]))
        for source, path in paths:
            key = f"{source.replace('-', '_')}_{entry['unified'].lower().replace('-', '_')}"
            labels = set(categories) | set(name.split())
            items.append(Item(key, source, str(path), name, list(categories), "emoji:" + entry["unified"], labels))
    return items


def apply_keyword_categories(items: list[Item]) -> None:
    """Move items whose specific name names a finer category to the front of that category."""
    for item in items:
        words = set(item.name.split())
        for category, keys in KEYWORD_CATEGORIES.items():
            if words & keys and category not in item.categories:
                item.categories.insert(0, category)
                item.labels.add(category)


def read_idx(path: Path):
    import numpy as np

    with gzip.open(path, "rb") as handle:
        data = handle.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_items(root: Path, per_class: int, rng) -> list[Item]:
    """A class-balanced sample of the Fashion-MNIST training set."""
    labels = read_idx(root / "train-labels-idx1-ubyte.gz")
    items: list[Item] = []
    for label, name in enumerate(FASHION_CLASSES):
        indices = [i for i in range(len(labels)) if labels[i] == label]
        for index in sorted(rng.sample(indices, min(per_class, len(indices)))):
            category = FASHION_CATEGORIES.get(name, "clothing")
            categories = [category] if category == name else [category, "clothing"] if category != "clothing" else ["clothing"]
            items.append(Item(f"fmnist_{index}", "fashion-mnist", f"{root / 'train-images-idx3-ubyte.gz'}#{index}",
                              name, categories, f"fmnist:{index}", {name, *categories}))
    return items


def load_emoji_meta(datasource_root: Path) -> list[dict]:
    return json.loads((datasource_root / "emoji-datasource" / "package" / "emoji.json").read_text())
