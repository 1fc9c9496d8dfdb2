"""Draw the demo's sample catalog: product pictures made here with Pillow, so they may be shipped.

Run ``python -m simstream.harness.sample.make_catalog`` to regenerate ``catalog.jsonl`` and ``images/``.
"""

from __future__ import annotations

from pathlib import Path

import orjson
from PIL import Image, ImageDraw

HERE = Path(__file__).parent
Shape = str

PRODUCTS: list[dict[str, object]] = [
    # headphones
    {"id": "hp-sony-xm5-blk", "title": "Sony WH-1000XM5 Wireless Noise Cancelling Headphones, Black", "brand": "Sony", "category": "Electronics > Audio > Headphones", "price": 399.99, "mpn": "WH1000XM5/B", "shape": "headphones", "color": (25, 25, 28)},
    {"id": "hp-sony-xm5-slv", "title": "Sony WH1000XM5 Over-Ear Bluetooth Headphones - Silver", "brand": "SONY", "category": "Electronics > Audio > Headphones", "price": 389.00, "mpn": "WH-1000XM5/S", "shape": "headphones", "color": (200, 200, 205)},
    {"id": "hp-bose-qc45", "title": "Bose QuietComfort 45 Bluetooth Wireless Noise Cancelling Headphones", "brand": "Bose", "category": "Electronics > Audio > Headphones", "price": 279.00, "mpn": "866724-0100", "shape": "headphones", "color": (30, 30, 60)},
    {"id": "hp-jbl-t510", "title": "JBL Tune 510BT Wireless On-Ear Headphones, Blue", "brand": "JBL", "category": "Electronics > Audio > Headphones", "price": 49.95, "mpn": "JBLT510BTBLU", "shape": "headphones", "color": (30, 80, 200)},
    # mugs
    {"id": "mug-white-350", "title": "Classic White Ceramic Coffee Mug 350 ml", "brand": "Kitchenly", "category": "Home > Kitchen > Mugs", "price": 7.99, "mpn": "KM-350-W", "shape": "mug", "color": (245, 245, 245)},
    {"id": "mug-red-350", "title": "Red Ceramic Coffee Mug 12 oz, dishwasher safe", "brand": "Kitchenly", "category": "Home > Kitchen > Mugs", "price": 8.49, "mpn": "KM-350-R", "shape": "mug", "color": (200, 30, 30)},
    {"id": "mug-travel-steel", "title": "Insulated Stainless Steel Travel Mug 16 oz with Lid", "brand": "Thermo", "category": "Home > Kitchen > Mugs", "price": 24.00, "mpn": "TTM16SS", "shape": "mug", "color": (160, 165, 170)},
    # t-shirts
    {"id": "tee-basic-navy-m", "title": "Men's Basic Cotton Crew Neck T-Shirt, Navy, M", "brand": "Everyday", "category": "Apparel > Men > T-Shirts", "price": 12.00, "mpn": "EV-TEE-NVY-M", "shape": "tshirt", "color": (20, 30, 80)},
    {"id": "tee-basic-navy-l", "title": "Men's Basic Cotton Crew Neck T-Shirt, Navy, L", "brand": "Everyday", "category": "Apparel > Men > T-Shirts", "price": 12.00, "mpn": "EV-TEE-NVY-L", "shape": "tshirt", "color": (20, 30, 80)},
    {"id": "tee-sport-red", "title": "Dry-Fit Sports T-Shirt Red, breathable running shirt", "brand": "Stride", "category": "Apparel > Men > T-Shirts", "price": 19.99, "mpn": "STR-DF-RED", "shape": "tshirt", "color": (210, 40, 40)},
    {"id": "tee-women-white", "title": "Women's Organic Cotton V-Neck Tee, White", "brand": "Everyday", "category": "Apparel > Women > T-Shirts", "price": 14.00, "mpn": "EV-VTEE-WHT", "shape": "tshirt", "color": (240, 240, 240)},
    # sneakers
    {"id": "shoe-run-blk-42", "title": "Lightweight Running Shoes Black, EU 42", "brand": "Stride", "category": "Apparel > Shoes > Running", "price": 89.00, "mpn": "STR-RUN1-42", "shape": "shoe", "color": (20, 20, 20)},
    {"id": "shoe-run-blue-43", "title": "Stride Run1 Lightweight Running Sneakers Blue EU 43", "brand": "Stride", "category": "Apparel > Shoes > Running", "price": 89.00, "mpn": "STR-RUN1-43B", "shape": "shoe", "color": (40, 90, 210)},
    {"id": "shoe-canvas-white", "title": "Classic Canvas Low-Top Sneakers, White", "brand": "Urbanwalk", "category": "Apparel > Shoes > Sneakers", "price": 45.00, "mpn": "UW-CNV-LOW-W", "shape": "shoe", "color": (235, 235, 230)},
    # laptops
    {"id": "laptop-air-13", "title": "Ultrabook 13.3\" Laptop, 16GB RAM, 512GB SSD, Silver", "brand": "Lumen", "category": "Electronics > Computers > Laptops", "price": 999.00, "mpn": "LMN-UB13-16-512", "shape": "laptop", "color": (190, 190, 195)},
    {"id": "laptop-pro-15", "title": "Pro Laptop 15.6\" 32GB RAM 1TB SSD, Space Grey", "brand": "Lumen", "category": "Electronics > Computers > Laptops", "price": 1799.00, "mpn": "LMN-PRO15-32-1T", "shape": "laptop", "color": (80, 80, 85)},
    {"id": "laptop-game-17", "title": "Gaming Laptop 17\" RTX graphics, 144Hz display", "brand": "Raptor", "category": "Electronics > Computers > Laptops", "price": 1499.00, "mpn": "RPT-G17-144", "shape": "laptop", "color": (30, 30, 30)},
    # bottles
    {"id": "bottle-steel-750", "title": "Insulated Stainless Steel Water Bottle 750 ml, keeps cold 24h", "brand": "Thermo", "category": "Home > Kitchen > Bottles", "price": 22.50, "mpn": "TWB750", "shape": "bottle", "color": (40, 140, 120)},
    {"id": "bottle-steel-1l", "title": "Thermo Vacuum Insulated Water Bottle 1 L, Teal", "brand": "Thermo", "category": "Home > Kitchen > Bottles", "price": 27.00, "mpn": "TWB1000", "shape": "bottle", "color": (30, 150, 140)},
    {"id": "bottle-sport-plastic", "title": "BPA-free Sports Water Bottle 600ml with flip cap", "brand": "Stride", "category": "Sports > Accessories > Bottles", "price": 9.99, "mpn": "STR-BTL-600", "shape": "bottle", "color": (240, 120, 30)},
]

DESCRIPTIONS: dict[str, str] = {
    "headphones": "<p>Over-ear <b>wireless</b> headphones with long battery life.</p>",
    "mug": "<p>Holds hot drinks; microwave and dishwasher safe.</p>",
    "tshirt": "<ul><li>100% cotton</li><li>Machine washable</li></ul>",
    "shoe": "<p>Breathable mesh upper, cushioned sole.</p>",
    "laptop": "<p>Thin and light laptop with all-day battery.</p>",
    "bottle": "<p>Leak-proof lid. Keeps drinks cold or hot.</p>",
}


def draw(shape: Shape, color: tuple[int, int, int], size: int = 256) -> Image.Image:
    """A plain product shot: one object on a light background."""
    img = Image.new("RGB", (size, size), (250, 250, 248))
    d = ImageDraw.Draw(img)
    outline = tuple(max(0, c - 60) for c in color)
    if shape == "headphones":
        d.arc((50, 30, 206, 186), 180, 360, fill=color, width=14)
        d.rounded_rectangle((36, 110, 86, 200), 18, fill=color, outline=outline, width=3)
        d.rounded_rectangle((170, 110, 220, 200), 18, fill=color, outline=outline, width=3)
    elif shape == "mug":
        d.rounded_rectangle((60, 70, 170, 210), 10, fill=color, outline=outline, width=3)
        d.ellipse((150, 100, 215, 170), outline=color, width=14)
        d.ellipse((60, 60, 170, 82), fill=outline)
    elif shape == "tshirt":
        d.polygon([(70, 50), (110, 40), (128, 60), (146, 40), (186, 50), (230, 95), (195, 125), (185, 110),
                   (185, 220), (71, 220), (71, 110), (61, 125), (26, 95)], fill=color, outline=outline)
    elif shape == "shoe":
        d.polygon([(30, 150), (40, 100), (95, 95), (140, 130), (215, 145), (230, 170), (30, 175)],
                  fill=color, outline=outline)
        d.rectangle((28, 172, 232, 190), fill=(230, 230, 230), outline=(120, 120, 120))
    elif shape == "laptop":
        d.rounded_rectangle((55, 50, 201, 150), 6, fill=(30, 30, 35), outline=color, width=8)
        d.polygon([(35, 160), (221, 160), (240, 190), (16, 190)], fill=color, outline=outline)
    elif shape == "bottle":
        d.rounded_rectangle((95, 70, 161, 225), 22, fill=color, outline=outline, width=3)
        d.rectangle((110, 35, 146, 72), fill=(60, 60, 60))
    return img


def main() -> None:
    (HERE / "images").mkdir(exist_ok=True)
    lines = []
    for p in PRODUCTS:
        name = f"{p['id']}.png"
        draw(str(p["shape"]), p["color"]).save(HERE / "images" / name, optimize=True)  # type: ignore[arg-type]
        lines.append(orjson.dumps({
            "product_id": p["id"], "op": "upsert", "version": 1, "title": p["title"],
            "description": DESCRIPTIONS[str(p["shape"])], "brand": p["brand"], "category": p["category"],
            "price": p["price"], "currency": "EUR", "mpn": p["mpn"], "image_url": f"file:{name}",
            "attributes": {"shape": str(p["shape"])}, "event_time": 0,
        }))
    (HERE / "catalog.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    print(f"wrote {len(lines)} products to {HERE / 'catalog.jsonl'}")


if __name__ == "__main__":
    main()
