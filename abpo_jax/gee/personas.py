"""Simulated user population for GEE: personas (user cohorts with shared interests).

Each persona is a short written description that the relevance judge reads; the population
mixes them with weights (uniform by default). A persona file replaces the defaults: one persona
per line as `name: description` (blank lines and `#` comments skipped).
"""

from __future__ import annotations

import dataclasses
import pathlib


@dataclasses.dataclass(frozen=True)
class Persona:
    name: str
    description: str


# Shopper cohorts written to be usable for any product category (the default GEE topic is a
# product category and the items are questions shoppers might ask about it).
DEFAULT_PERSONAS: tuple[Persona, ...] = (
    Persona("budget student", "A university student on a tight budget who compares prices "
            "carefully and cares most about value for money and discounts."),
    Persona("audiophile", "An enthusiast who obsesses over technical specifications, sound and "
            "build quality, and reads detailed reviews before buying."),
    Persona("busy parent", "A parent of young children who needs products that are durable, "
            "safe, easy to clean and quick to set up."),
    Persona("frequent traveller", "A business traveller who values portability, battery life, "
            "light weight and compatibility across countries."),
    Persona("eco-conscious buyer", "A shopper who prioritises sustainability, recycled materials, "
            "repairability and ethical manufacturing."),
    Persona("tech early adopter", "Someone who wants the newest features, smart connectivity and "
            "app integration, and upgrades often."),
    Persona("senior citizen", "A retired person who wants simple controls, large buttons, clear "
            "instructions and reliable customer support."),
    Persona("fitness enthusiast", "An athlete who trains daily and needs products that are "
            "sweat-proof, secure during exercise and track performance."),
    Persona("gift shopper", "A person buying a present for someone else who cares about "
            "packaging, return policy, popularity and delivery time."),
    Persona("gamer", "A competitive video gamer who cares about low latency, comfort during long "
            "sessions and compatibility with consoles and PCs."),
    Persona("remote worker", "A professional working from home who needs comfort for all-day "
            "use, good microphones and reliable video-call performance."),
    Persona("safety-minded buyer", "A cautious shopper worried about health risks, certifications, "
            "recalls and safe materials."),
    Persona("brand loyalist", "A customer who sticks to trusted premium brands and wants to know "
            "how a product compares to the brand's previous models."),
    Persona("DIY tinkerer", "A hands-on person who likes to repair, modify and customise "
            "products and asks about spare parts and open standards."),
    Persona("minimalist", "Someone who owns few things, prefers simple, elegant multi-purpose "
            "designs and avoids clutter and unnecessary features."),
    Persona("accessibility user", "A shopper with a visual or hearing impairment who needs "
            "accessible design, voice control and compatibility with assistive devices."),
    Persona("outdoor adventurer", "A hiker and camper who needs rugged, waterproof products that "
            "work in extreme temperatures and far from power outlets."),
    Persona("small business owner", "An owner buying in bulk for a team who cares about warranty, "
            "invoicing, bulk discounts and consistent supply."),
    Persona("fashion-focused buyer", "A style-conscious shopper who cares about colours, "
            "aesthetics, matching accessories and current trends."),
    Persona("first-time buyer", "A complete beginner who does not understand the jargon and wants "
            "to know which basic features matter and how to get started."),
    Persona("deal hunter", "A bargain seeker who waits for sales, compares sellers and asks about "
            "refurbished options, coupons and price history."),
    Persona("privacy advocate", "A shopper worried about data collection, tracking, account "
            "requirements and what the product does with personal information."),
    Persona("commuter", "A daily public-transport commuter who needs compact products usable on "
            "the go, in noisy and crowded places."),
    Persona("musician", "A musician and home producer who needs accurate, professional-grade "
            "equipment and asks about studio and stage use."),
)


def load_personas(path: str = "", count: int = 0) -> list[Persona]:
    """Personas from `path` (lines `name: description`) or the defaults; the first `count` (0 = all).

    Raises ValueError naming the file and line of a malformed entry.
    """
    if path:
        personas = []
        for lineno, line in enumerate(pathlib.Path(path).read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, description = line.partition(":")
            if not sep or not name.strip() or not description.strip():
                raise ValueError(f"{path}:{lineno}: expected 'name: description', got {line!r}")
            personas.append(Persona(name.strip(), description.strip()))
        if not personas:
            raise ValueError(f"{path}: no personas found")
    else:
        personas = list(DEFAULT_PERSONAS)
    if count < 0 or count > len(personas):
        raise ValueError(f"config.gee.num_personas={count} but only {len(personas)} personas are "
                         f"available ({path or 'built-in defaults'})")
    return personas[:count] if count else personas
