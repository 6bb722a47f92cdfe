"""The demo corpus: #selfie posts made deterministically from real portraits shipped in installed
packages (scikit-image's astronaut, matplotlib's Grace Hopper) and photos without people.

Each image is a recipe of the cues the article reports: how much of the frame the face fills,
a colour filter or black and white, a border, low light with noise, an oversized head, a group of
faces, or no face at all. Authors, followers, tags, dates and likes are synthetic: the expected
likes of a post grow with its author's audience and with the cues the article found liked, plus
noise. This is SYNTHETIC ENGAGEMENT, made so that the pipeline has something real to learn.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import io
import math

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

FILTERS = ("none", "bw", "warm", "vintage", "cool", "saturated")
EXTRA_TAGS = ("me", "portrait", "photooftheday", "happy", "love", "smile", "instagood", "fun",
              "style", "weekend")

# Effects on log(likes) of each cue (the article's findings, as numbers we chose).
EFFECTS = {
    "face_third": 0.7,      # the face fills about a third of the frame
    "face_small": -0.3,     # the face is a small part of the frame
    "too_close": -0.6,      # an oversized head
    "filter": 0.35,         # a colour filter or black and white
    "saturated": -0.25,     # over-saturated colours
    "border": 0.45,         # a border around the photo
    "dark": -0.9,           # low light with noise
    "group": -0.7,          # several faces
}


@dataclasses.dataclass
class Source:
    name: str
    image: np.ndarray                # H x W x 3 uint8 RGB
    face: tuple | None = None        # (cx, cy, w, h) of the face in pixels


def portraits() -> list[Source]:
    """The real portraits, with where their faces are."""
    import matplotlib.cbook
    import skimage.data
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        hopper = np.asarray(Image.open(f).convert("RGB"))
    return [Source("astronaut", skimage.data.astronaut(), (225, 125, 115, 135)),
            Source("grace_hopper", hopper, (265, 240, 210, 230))]


def scenes() -> list[Source]:
    """Photos without people."""
    import skimage.data
    from sklearn.datasets import load_sample_image
    out = [Source("coffee", skimage.data.coffee()), Source("chelsea", skimage.data.chelsea()),
           Source("rocket", skimage.data.rocket())]
    for name in ("china.jpg", "flower.jpg"):
        out.append(Source(name.split(".")[0], load_sample_image(name)))
    return out


@dataclasses.dataclass
class Recipe:
    kind: str = "portrait"           # portrait | group | noface
    source: int = 0
    face_frac: float = 0.33          # face height / frame height
    dx: float = 0.0                  # face offset from center, in frame widths
    dy: float = 0.0
    filter: str = "none"
    border: bool = False
    dark: bool = False
    group_size: int = 1
    width: int = 320
    height: int = 320

    def cues(self) -> dict:
        """The cues as booleans, for the likes model and the report."""
        face = self.kind != "noface"
        return {
            "face": face,
            "group": self.kind == "group",
            "face_third": face and self.kind == "portrait" and 0.25 <= self.face_frac <= 0.45,
            "face_small": face and self.face_frac < 0.2,
            "too_close": face and self.face_frac > 0.55,
            "filter": self.filter in ("bw", "warm", "vintage", "cool"),
            "saturated": self.filter == "saturated",
            "border": self.border,
            "dark": self.dark,
        }


def _crop_around(src: Source, frac: float, dx: float, dy: float, w: int, h: int,
                 backdrop: Source) -> Image.Image:
    """A w x h frame in which src's face is frac of the height, offset by (dx, dy) frames.
    Where the frame reaches past the photo, the person stands in front of a blurred backdrop."""
    from PIL import ImageFilter
    cx, cy, _, fh = src.face
    ch = fh / frac                               # frame height in source pixels
    cw = ch * w / h
    x0 = cx - cw / 2 - dx * cw
    y0 = cy - ch / 2 - dy * ch
    img = Image.fromarray(src.image)
    inside = x0 >= 0 and y0 >= 0 and x0 + cw <= img.width and y0 + ch <= img.height
    if inside:
        box = tuple(int(round(v)) for v in (x0, y0, x0 + cw, y0 + ch))
        return img.crop(box).resize((w, h), Image.BILINEAR)
    scale = h / ch
    canvas = ImageOps.fit(Image.fromarray(backdrop.image), (w, h)).filter(
        ImageFilter.GaussianBlur(3))
    sx0, sy0 = max(0.0, x0), max(0.0, y0)
    sx1, sy1 = min(img.width, x0 + cw), min(img.height, y0 + ch)
    size = (max(1, round((sx1 - sx0) * scale)), max(1, round((sy1 - sy0) * scale)))
    region = img.crop(tuple(int(round(v)) for v in (sx0, sy0, sx1, sy1))).resize(
        size, Image.BILINEAR)
    canvas.paste(region, (round((sx0 - x0) * scale), round((sy0 - y0) * scale)))
    return canvas


def _filter(img: Image.Image, name: str) -> Image.Image:
    if name == "bw":
        return ImageOps.grayscale(img).convert("RGB")
    if name == "saturated":
        return ImageEnhance.Contrast(ImageEnhance.Color(img).enhance(2.6)).enhance(1.25)
    if name == "none":
        return img
    arr = np.asarray(img).astype(np.float32)
    if name == "warm":
        arr = arr * np.array([1.12, 1.0, 0.82])
    elif name == "cool":
        arr = arr * np.array([0.85, 0.98, 1.15])
    elif name == "vintage":
        sepia = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]])
        arr = 0.75 * (arr @ sepia.T) + 0.25 * arr
        arr = arr * 0.92 + 18
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def render(recipe: Recipe, faces: list[Source], others: list[Source],
           rs: np.random.RandomState) -> Image.Image:
    """The image for a recipe (RGB)."""
    w, h = recipe.width, recipe.height
    if recipe.kind == "noface":
        src = others[recipe.source % len(others)]
        img = Image.fromarray(src.image)
        scale = rs.uniform(0.6, 1.0)
        cw = min(img.width, int(img.height * scale * w / h))
        ch = int(cw * h / w)
        x0 = rs.randint(0, img.width - cw + 1)
        y0 = rs.randint(0, img.height - ch + 1)
        img = img.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.BILINEAR)
    elif recipe.kind == "group":
        n = recipe.group_size
        tile_w = w // n
        img = Image.new("RGB", (w, h))
        for i in range(n):
            src = faces[(recipe.source + i) % len(faces)]
            tile = _crop_around(src, recipe.face_frac, rs.uniform(-0.05, 0.05),
                                rs.uniform(-0.05, 0.05), tile_w, h,
                                others[(recipe.source + i) % len(others)])
            if i % 2:
                tile = ImageOps.mirror(tile)
            img.paste(tile, (i * tile_w, 0))
    else:
        src = faces[recipe.source % len(faces)]
        img = _crop_around(src, recipe.face_frac, recipe.dx, recipe.dy, w, h,
                           others[recipe.source % len(others)])
    img = _filter(img, recipe.filter)
    if recipe.dark:
        arr = np.asarray(img).astype(np.float32) * rs.uniform(0.18, 0.3)
        arr += rs.normal(0, 9, arr.shape)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if recipe.border:
        b = max(6, int(0.06 * min(w, h)))
        color = (255, 255, 255) if rs.rand() < 0.7 else (0, 0, 0)
        inner = img.resize((w - 2 * b, h - 2 * b), Image.BILINEAR)
        img = Image.new("RGB", (w, h), color)
        img.paste(inner, (b, b))
    return img


def random_recipe(rs: np.random.RandomState) -> Recipe:
    r = Recipe()
    u = rs.rand()
    r.kind = "noface" if u < 0.08 else ("group" if u < 0.22 else "portrait")
    r.source = rs.randint(0, 1000)
    if r.kind == "group":
        r.group_size = rs.choice([2, 3])
        r.face_frac = rs.uniform(0.25, 0.4)
    else:
        band = rs.rand()
        r.face_frac = (rs.uniform(0.12, 0.2) if band < 0.25 else
                       rs.uniform(0.26, 0.44) if band < 0.7 else rs.uniform(0.56, 0.8))
    r.dx, r.dy = rs.uniform(-0.12, 0.12), rs.uniform(-0.1, 0.1)
    r.filter = FILTERS[rs.choice(len(FILTERS), p=[0.4, 0.15, 0.12, 0.12, 0.08, 0.13])]
    r.border = rs.rand() < 0.3
    r.dark = rs.rand() < 0.2
    r.width = 320
    r.height = int(rs.choice([320, 320, 400]))
    return r


def log_effect(cues: dict) -> float:
    return sum(v for k, v in EFFECTS.items() if cues.get(k))


@dataclasses.dataclass
class DemoPost:
    id: int
    author: str
    followers: int
    likes: int
    reblogs: int
    tags: list
    created_at: dt.datetime
    recipe: Recipe
    jpeg: bytes

    @property
    def cues(self):
        return self.recipe.cues()


def make_corpus(n_posts: int, seed: int = 0, fetched_at: dt.datetime | None = None,
                domain: str = "demo.local") -> list[DemoPost]:
    """n_posts posts by about n_posts / 4 authors (deterministic for a seed)."""
    rs = np.random.RandomState(seed)
    faces, others = portraits(), scenes()
    # dates count back from now, so that the label stage's "online a month" rule acts on ~5%
    fetched_at = fetched_at or dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    n_authors = max(4, n_posts // 4)
    followers = np.exp(rs.normal(math.log(800), 1.0, n_authors)).astype(int) + 20
    posts = []
    for i in range(n_posts):
        a = rs.randint(0, n_authors)
        recipe = random_recipe(rs)
        img = render(recipe, faces, others, rs)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        tags = ["selfie"] + list(rs.choice(EXTRA_TAGS, size=rs.randint(0, 4), replace=False))
        age_days = rs.uniform(35, 400) if rs.rand() > 0.05 else rs.uniform(1, 25)
        expected = 0.04 * followers[a] * math.exp(log_effect(recipe.cues()))
        likes = int(round(expected * math.exp(rs.normal(0, 0.35))))
        posts.append(DemoPost(
            id=100000 + i, author=f"user{a:04d}@{domain}", followers=int(followers[a]),
            likes=likes, reblogs=int(likes * rs.uniform(0, 0.2)), tags=tags,
            created_at=fetched_at - dt.timedelta(days=float(age_days)), recipe=recipe,
            jpeg=buf.getvalue()))
    return posts


def make_heldout(n: int, seed: int = 1) -> list[tuple[Recipe, bytes]]:
    """Images no stage has seen, with their recipes, for scoring and the by-cue report."""
    rs = np.random.RandomState(seed + 7919)
    faces, others = portraits(), scenes()
    out = []
    for _ in range(n):
        recipe = random_recipe(rs)
        buf = io.BytesIO()
        render(recipe, faces, others, rs).save(buf, format="JPEG", quality=90)
        out.append((recipe, buf.getvalue()))
    return out


def to_status(post: DemoPost, base_url: str) -> dict:
    """The post as a Mastodon API status (what GET /api/v1/timelines/tag/selfie returns)."""
    r = post.recipe
    return {
        "id": str(post.id),
        "uri": f"{base_url}/users/{post.author.split('@')[0]}/statuses/{post.id}",
        "url": f"{base_url}/@{post.author.split('@')[0]}/{post.id}",
        "created_at": post.created_at.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "sensitive": False,
        "favourites_count": post.likes,
        "reblogs_count": post.reblogs,
        "content": "<p>" + " ".join(f"#{t}" for t in post.tags) + "</p>",
        "tags": [{"name": t, "url": f"{base_url}/tags/{t}"} for t in post.tags],
        "account": {
            "id": post.author.split("@")[0], "acct": post.author,
            "username": post.author.split("@")[0], "followers_count": post.followers,
            "indexable": True, "noindex": False, "note": "<p>demo account</p>",
        },
        "media_attachments": [{
            "id": f"m{post.id}", "type": "image",
            "url": f"{base_url}/media/{post.id}.jpg",
            "meta": {"original": {"width": r.width, "height": r.height}},
        }],
    }
