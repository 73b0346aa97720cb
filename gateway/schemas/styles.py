"""instantid's 29 styles: each a positive template (with `{prompt}`) and a negative one.

Ten names are fixed by the hosted endpoint's page. Nine of them are InstantID's own style list
(the InstantX-research InstantID repository, `gradio_demo/style_template.py`): their templates
are its texts word for word, weights in `(word:1.2)` included (prompts are encoded with
long-prompt weighting). `Art Nouveau` and nineteen more well-known art styles have templates
written for this server. A style turns the request's prompt and negative prompt
into the ones the model receives (`apply_style`), before the job reaches the runner.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

PROMPT_SLOT = "{prompt}"


class Style(NamedTuple):
    positive: str  # holds PROMPT_SLOT where the request's prompt goes
    negative: str  # joined before the request's own negative prompt


NO_STYLE = "(No style)"

# The negative InstantID's demo gives most of its styles.
_DEMO_NEGATIVE = (
    "(lowres, low quality, worst quality:1.2), (text:1.2), watermark, (frame:1.2), deformed, "
    "ugly, deformed eyes, blur, out of focus, blurry, deformed cat, deformed, photo, "
    "anthropomorphic cat, monochrome, photo, pet collar, gun, weapon, blue, 3d, drones, drone, "
    "buildings in background, green"
)

STYLES: dict[str, Style] = {
    # --- InstantID's own nine (its gradio_demo/style_template.py), word for word ----------------
    NO_STYLE: Style("{prompt}", ""),
    "Watercolor": Style(
        "watercolor painting, {prompt}. vibrant, beautiful, painterly, detailed, textural, "
        "artistic",
        "(lowres, low quality, worst quality:1.2), (text:1.2), watermark, anime, "
        "photorealistic, 35mm film, deformed, glitch, low contrast, noisy",
    ),
    "Film Noir": Style(
        "film noir style, ink sketch|vector, {prompt} highly detailed, sharp focus, ultra "
        "sharpness, monochrome, high contrast, dramatic shadows, 1940s style, mysterious, "
        "cinematic",
        _DEMO_NEGATIVE,
    ),
    "Neon": Style(
        "masterpiece painting, buildings in the backdrop, kaleidoscope, lilac orange blue "
        "cream fuchsia bright vivid gradient colors, the scene is cinematic, {prompt}, "
        "emotional realism, double exposure, watercolor ink pencil, graded wash, color "
        "layering, magic realism, figurative painting, intricate motifs, organic tracery, "
        "polished",
        _DEMO_NEGATIVE,
    ),
    "Jungle": Style(
        'waist-up "{prompt} in a Jungle" by Syd Mead, tangerine cold color palette, muted '
        "colors, detailed, 8k,photo r3al,dripping paint,3d toon style,3d style,Movie Still",
        _DEMO_NEGATIVE,
    ),
    "Mars": Style(
        "{prompt}, Post-apocalyptic. Mars Colony, Scavengers roam the wastelands searching for "
        "valuable resources, rovers, bright morning sunlight shining, (detailed) (intricate) "
        "(8k) (HDR) (cinematic lighting) (sharp focus)",
        _DEMO_NEGATIVE,
    ),
    "Vibrant Color": Style(
        "vibrant colorful, ink sketch|vector|2d colors, at nightfall, sharp focus, {prompt}, "
        "highly detailed, sharp focus, the clouds,colorful,ultra sharpness",
        _DEMO_NEGATIVE,
    ),
    "Snow": Style(
        "cinema 4d render, {prompt}, high contrast, vibrant and saturated, sico style, "
        "surrounded by magical glow,floating ice shards, snow crystals, cold, windy "
        "background, frozen natural landscape in background  cinematic atmosphere,highly "
        "detailed, sharp focus, intricate design, 3d, unreal engine, octane render, CG best "
        "quality, highres, photorealistic, dramatic lighting, artstation, concept art, "
        "cinematic, epic Steven Spielberg movie still, sharp focus, smoke, sparks, art by "
        "pascal blanche and greg rutkowski and repin, trending on artstation, hyperrealism "
        "painting, matte painting, 4k resolution",
        _DEMO_NEGATIVE,
    ),
    "Line art": Style(
        "line art drawing {prompt} . professional, sleek, modern, minimalist, graphic, line "
        "art, vector graphics",
        "anime, photorealistic, 35mm film, deformed, glitch, blurry, noisy, off-center, "
        "deformed, cross-eyed, closed eyes, bad anatomy, ugly, disfigured, mutated, realism, "
        "realistic, impressionism, expressionism, oil, acrylic",
    ),
    # --- the tenth name of the hosted page, and nineteen more well-known styles: ours --------
    "Art Nouveau": Style(
        "art nouveau illustration of {prompt}, flowing organic lines, ornamental floral "
        "borders, elegant curves, muted gold and green, Mucha-inspired poster",
        "photograph, modern, minimalist, harsh geometric shapes, 3d render, neon",
    ),
    "Photographic": Style(
        "professional photograph of {prompt}, 50mm lens, natural light, shallow depth of field, "
        "sharp focus, high detail",
        "drawing, painting, illustration, cartoon, anime, cgi, deformed, blurry",
    ),
    "Cinematic": Style(
        "cinematic film still of {prompt}, anamorphic lens, dramatic lighting, colour graded, "
        "shallow depth of field, epic composition, film grain",
        "amateur snapshot, flat lighting, cartoon, drawing, low budget, overexposed",
    ),
    "Anime": Style(
        "anime illustration of {prompt}, cel shading, expressive eyes, clean line work, "
        "vibrant colours, studio anime key visual",
        "photograph, photorealistic, 3d render, western cartoon, realistic skin texture",
    ),
    "Comic Book": Style(
        "comic book panel of {prompt}, bold ink outlines, halftone dots, dynamic pose, "
        "flat vivid colours, graphic novel style",
        "photograph, photorealistic, soft focus, watercolor, muted colours, blurry",
    ),
    "Digital Art": Style(
        "digital painting of {prompt}, concept art, detailed brushwork, dramatic lighting, "
        "trending artstation quality, rich colours",
        "photograph, low detail, sketch, amateur, blurry, jpeg artefacts",
    ),
    "Fantasy Art": Style(
        "epic fantasy artwork of {prompt}, magical atmosphere, ethereal glow, intricate "
        "armour and robes, mythical landscape, painterly, highly detailed",
        "modern city, mundane, photograph, cartoon, low detail, dull",
    ),
    "Pixel Art": Style(
        "pixel art of {prompt}, 16-bit retro game sprite, limited palette, crisp pixels, "
        "dithering, nostalgic",
        "smooth gradients, photograph, realistic, blurry, anti-aliased, high resolution detail",
    ),
    "Pop Art": Style(
        "pop art portrait of {prompt}, Warhol and Lichtenstein style, bold flat colours, "
        "Ben-Day dots, thick outlines, repeated colour blocks",
        "photograph, realistic, muted colours, soft shading, watercolor, dull",
    ),
    "Impressionism": Style(
        "impressionist oil painting of {prompt}, visible short brushstrokes, dappled light, "
        "plein air, Monet-like palette, soft edges",
        "photograph, sharp lines, digital art, 3d render, flat colours, hard outlines",
    ),
    "Cubism": Style(
        "cubist painting of {prompt}, fragmented geometric planes, multiple viewpoints, "
        "Picasso and Braque style, earthy palette, abstracted forms",
        "photograph, photorealistic, smooth, realistic proportions, soft focus",
    ),
    "Surrealism": Style(
        "surrealist painting of {prompt}, dreamlike impossible scene, melting forms, uncanny "
        "juxtapositions, Dalí and Magritte inspired, meticulous detail",
        "ordinary, mundane, photograph, documentary, plain, realistic scene",
    ),
    "Art Deco": Style(
        "art deco poster of {prompt}, streamlined geometric shapes, gold and black, symmetry, "
        "sunburst motifs, 1920s glamour, elegant typography-free design",
        "organic shapes, messy, grunge, photograph, rustic, cluttered",
    ),
    "Ukiyo-e": Style(
        "ukiyo-e woodblock print of {prompt}, Edo period Japan, flat colour areas, bold "
        "outlines, Hokusai and Hiroshige style, textured washi paper",
        "photograph, 3d render, western painting, gradients, photorealistic, neon",
    ),
    "Oil Painting": Style(
        "classical oil painting of {prompt}, rich impasto, glazing, old master lighting, "
        "canvas texture, museum quality",
        "photograph, digital art, flat colours, cartoon, anime, vector",
    ),
    "Pencil Sketch": Style(
        "graphite pencil sketch of {prompt}, cross-hatching, fine shading, sketchbook paper, "
        "hand-drawn, monochrome",
        "colour, painting, photograph, digital art, smooth gradients, vibrant",
    ),
    "Steampunk": Style(
        "steampunk {prompt}, brass gears and copper pipes, Victorian clothing, goggles, "
        "steam and clockwork machinery, warm sepia tones, intricate detail",
        "modern technology, minimalist, futuristic neon, plastic, clean, sterile",
    ),
    "Cyberpunk": Style(
        "cyberpunk {prompt}, futuristic megacity, neon signs, rain-slicked streets, cybernetic "
        "implants, holograms, high-tech low-life, moody lighting",
        "rural, medieval, daylight pastoral, natural landscape, vintage, sepia",
    ),
    "Stained Glass": Style(
        "stained glass window depicting {prompt}, lead came outlines, jewel-toned translucent "
        "glass, light shining through, cathedral style, symmetrical",
        "photograph, realistic, matte, 3d render, blurry, dull colours",
    ),
    "Pointillism": Style(
        "pointillist painting of {prompt}, composed of tiny distinct dots of pure colour, "
        "Seurat style, optical colour mixing, luminous",
        "brush strokes, smooth gradients, photograph, flat colours, line art",
    ),
}

# The names as an enum: the request schema validates and documents it, and a 400 lists it.
StyleName = Literal[tuple(STYLES)]


def apply_style(name: str, prompt: str, negative_prompt: str) -> tuple[str, str]:
    """(prompt, negative prompt) as the model receives them under style `name`: the style's
    negative, a space, the request's (InstantID's demo joins them so; an empty part is left out,
    which the tokenizer would drop anyway)."""
    style = STYLES[name]
    negatives = [part for part in (style.negative, negative_prompt) if part]
    return style.positive.replace(PROMPT_SLOT, prompt), " ".join(negatives)
