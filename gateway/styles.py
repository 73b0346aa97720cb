"""instantid's 29 styles: each a positive template (with `{prompt}`) and a negative one.

Ten names are fixed by the hosted endpoint's page; the other nineteen are well-known art styles,
their templates written for this server. A style turns the request's prompt and negative prompt
into the ones the model receives (`apply_style`), before the job reaches the runner.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

PROMPT_SLOT = "{prompt}"


class Style(NamedTuple):
    positive: str  # holds PROMPT_SLOT where the request's prompt goes
    negative: str  # joined before the request's own negative prompt


NO_STYLE = "(No style)"

STYLES: dict[str, Style] = {
    # --- the ten the hosted page names --------------------------------------------------------
    NO_STYLE: Style("{prompt}", ""),
    "Watercolor": Style(
        "watercolor painting of {prompt}, soft washes, bleeding pigments, textured paper, "
        "loose brushwork, luminous colours",
        "photograph, photorealistic, 3d render, hard edges, digital noise, low contrast",
    ),
    "Film Noir": Style(
        "film noir still, {prompt}, black and white, hard chiaroscuro lighting, venetian blind "
        "shadows, 1940s, moody, high contrast, cinematic grain",
        "colour, colourful, vibrant, flat lighting, cartoon, low contrast, bright and cheerful",
    ),
    "Neon": Style(
        "{prompt}, glowing neon lights, vivid magenta and cyan, night city reflections, "
        "electric atmosphere, long exposure glow, high saturation",
        "daylight, dull colours, muted, washed out, overexposed, flat lighting",
    ),
    "Jungle": Style(
        "{prompt}, deep in a lush tropical jungle, dense green foliage, hanging vines, shafts "
        "of sunlight through the canopy, humid mist, vibrant wildlife",
        "desert, snow, city, barren, dry, monochrome, grey",
    ),
    "Mars": Style(
        "{prompt}, on the surface of Mars, red dust plains, rust-coloured rocks, thin hazy "
        "pink sky, distant craters, science fiction, cinematic",
        "green grass, trees, ocean, blue sky, earth landscape, cartoon",
    ),
    "Vibrant Color": Style(
        "vibrant colourful {prompt}, bold saturated palette, rich contrast, radiant light, "
        "joyful energy, highly detailed",
        "dull, muted colours, black and white, monochrome, grey, washed out, low contrast",
    ),
    "Snow": Style(
        "{prompt}, in a snowy winter landscape, falling snowflakes, frost, cold blue light, "
        "breath visible in the air, crisp and serene",
        "summer, tropical, desert, hot, sunburnt, green leaves, beach",
    ),
    "Line art": Style(
        "clean line art drawing of {prompt}, black ink outlines on white, minimal, precise "
        "contours, no shading, graphic illustration",
        "colour, painting, photograph, shading, gradients, texture, blurry, realistic",
    ),
    "Art Nouveau": Style(
        "art nouveau illustration of {prompt}, flowing organic lines, ornamental floral "
        "borders, elegant curves, muted gold and green, Mucha-inspired poster",
        "photograph, modern, minimalist, harsh geometric shapes, 3d render, neon",
    ),
    # --- nineteen more well-known styles ---------------------------------------------------------
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
    """(prompt, negative prompt) as the model receives them under style `name`."""
    style = STYLES[name]
    negatives = [part for part in (style.negative, negative_prompt) if part]
    return style.positive.replace(PROMPT_SLOT, prompt), ", ".join(negatives)
