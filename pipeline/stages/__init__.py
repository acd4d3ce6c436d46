"""Ray-free callables that make and measure images: generate (text-to-image, image-to-image,
inpainting), CLIP score, moderation, and the candidate and write stages the runner places on actors.
"""
