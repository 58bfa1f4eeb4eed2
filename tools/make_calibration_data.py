"""Regenerate the derived files of ``calibration_data/``: text lines, screenshots, speech clips, manifest.

    .venv/bin/python tools/make_calibration_data.py                 # everything
    .venv/bin/python tools/make_calibration_data.py --only text     # or: screenshots, speech, manifest

``prompts.jsonl`` is hand-written and is this script's input (speech clips speak its prompts that
have ``"audio": true``); everything else is derived, deterministically (fixed seeds, no clock):

- ``text/{calib,heldout}_{zh,en}.txt``: phone-agent instructions, assistant replies, screen
  descriptions and actions from seeded templates. Fillers (contacts, items, places, messages) are
  split between calib and held-out so the held-out lines also hold names the calib lines never
  use; no line is in both, in prompts.jsonl or in tools/tokenizer_corpus/.
- ``screenshots/*.png``: app-like phone screens drawn with Pillow (needs a CJK font: Debian
  ``fonts-wqy-microhei``).
- ``speech/*.wav``: espeak-ng (Debian ``espeak-ng``; voices ``cmn`` and ``en-us``), trimmed,
  resampled to 16 kHz with the runtime's resampler, 16-bit mono PCM written with ``wave``.
- ``MANIFEST.sha256``: ``sha256sum -c`` format over every data file.

Pixels and samples are reproducible for the same font file and espeak-ng version; PNG bytes may
also depend on the zlib that Pillow links, which is why the manifest is checked, not rebuilt, in CI.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import shutil
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "calibration_data"
CORPUS = ROOT / "tools" / "tokenizer_corpus"
SEED = 20261130
LINES_PER_FILE = 150
RATE = 16000
PARTS = ("text", "screenshots", "speech", "manifest")
DATA_GLOBS = ("prompts.jsonl", "text/*.txt", "screenshots/*.png", "speech/*.wav")


# ============================================================================================ text

# Fillers that differ between splits: index parity decides (even -> calib, odd -> held-out).
SPLIT_FILLERS = {
    "zh": {
        "contact": [
            "张三",
            "李四",
            "王五",
            "赵六",
            "孙七",
            "周八",
            "吴九",
            "郑十",
            "小王",
            "老刘",
            "陈经理",
            "林老师",
            "妈妈",
            "爸爸",
            "姐姐",
            "表哥",
            "小美",
            "阿强",
            "刘洋",
            "何静",
            "黄主管",
            "宋阿姨",
            "马老板",
            "唐师傅",
        ],
        "item": [
            "蓝牙耳机",
            "充电宝",
            "保温杯",
            "运动鞋",
            "机械键盘",
            "数据线",
            "手机壳",
            "洗发水",
            "折叠伞",
            "护眼台灯",
            "猫粮",
            "咖啡豆",
            "瑜伽垫",
            "登山包",
            "电动牙刷",
            "空气炸锅",
            "儿童绘本",
            "无线鼠标",
            "防晒霜",
            "羽绒服",
        ],
        "place": [
            "首都机场",
            "北京南站",
            "公司",
            "小区门口",
            "国贸地铁站",
            "人民医院",
            "中山公园",
            "万达广场",
            "西湖",
            "图书馆",
            "虹桥火车站",
            "大学城",
            "体育馆",
            "外滩",
            "奥林匹克公园",
            "市政府",
            "动物园",
            "科技园",
        ],
        "msg": [
            "明天上午十点开会",
            "我已经到楼下了",
            "晚饭不用等我",
            "文件已经发到你邮箱",
            "周六一起去爬山吧",
            "会议改到下午三点",
            "帮我带一杯咖啡",
            "快递我帮你拿了",
            "路上堵车，晚到十分钟",
            "生日快乐",
            "合同明天签",
            "记得带钥匙",
            "票已经订好了",
            "今晚加班",
            "报告我晚上发你",
            "周末回家吃饭",
        ],
        "dish": [
            "黄焖鸡米饭",
            "牛肉拉面",
            "麻辣烫",
            "宫保鸡丁盖饭",
            "鲜虾馄饨",
            "烤鸭套餐",
            "酸菜鱼",
            "水果沙拉",
            "珍珠奶茶",
            "煎饼果子",
            "小笼包",
            "冰美式",
        ],
        "topic": [
            "手机拍照技巧",
            "红烧肉做法",
            "健身入门",
            "英语口语",
            "旅行攻略",
            "吉他教学",
            "数码测评",
            "猫咪日常",
            "考研经验",
            "装修灵感",
        ],
    },
    "en": {
        "contact": [
            "Tom",
            "Anna",
            "Li Wei",
            "Mom",
            "Dad",
            "Sarah",
            "David",
            "Emma",
            "James",
            "Olivia",
            "Chen Jie",
            "Priya",
            "Lucas",
            "Mia",
            "Noah",
            "Grace",
            "Uncle Ben",
            "Dr. Patel",
            "Coach Kim",
            "Zhang Min",
            "Rachel",
            "Omar",
        ],
        "item": [
            "wireless earbuds",
            "a power bank",
            "a travel mug",
            "running shoes",
            "a mechanical keyboard",
            "a USB-C cable",
            "a phone case",
            "shampoo",
            "a compact umbrella",
            "a desk lamp",
            "cat food",
            "coffee beans",
            "a yoga mat",
            "a hiking backpack",
            "an electric toothbrush",
            "an air fryer",
            "a picture book",
            "a wireless mouse",
            "sunscreen",
            "a down jacket",
        ],
        "place": [
            "the airport",
            "Central Station",
            "the office",
            "my apartment",
            "the nearest subway station",
            "City Hospital",
            "Riverside Park",
            "the shopping mall",
            "the library",
            "the stadium",
            "the train station",
            "the university",
            "the museum",
            "the beach",
            "downtown",
            "the zoo",
            "the tech park",
            "the ferry terminal",
        ],
        "msg": [
            "the meeting moved to 3 pm",
            "I'm downstairs",
            "don't wait for me for dinner",
            "the file is in your inbox",
            "let's go hiking on Saturday",
            "can you grab me a coffee",
            "I picked up your parcel",
            "stuck in traffic",
            "happy birthday",
            "the contract is ready to sign",
            "don't forget your keys",
            "the tickets are booked",
            "I'm working late tonight",
            "I'll send the report tonight",
            "see you at lunch",
            "call me when you land",
        ],
        "dish": [
            "chicken rice",
            "beef noodles",
            "a veggie burger",
            "pad thai",
            "shrimp dumplings",
            "a poke bowl",
            "a margherita pizza",
            "a fruit salad",
            "bubble tea",
            "a breakfast burrito",
            "iced americano",
            "ramen",
        ],
        "topic": [
            "phone photography tips",
            "easy dinner recipes",
            "beginner workouts",
            "English speaking practice",
            "travel vlogs",
            "guitar lessons",
            "gadget reviews",
            "cat videos",
            "study tips",
            "home makeover ideas",
        ],
    },
}

# Fillers shared by both splits: too few to split, and apps/times are not what held-out tests.
SHARED = {
    "zh": {
        "chat_app": ["微信", "QQ", "钉钉", "企业微信", "飞书"],
        "shop": ["淘宝", "京东", "拼多多", "天猫"],
        "map": ["高德地图", "百度地图", "腾讯地图"],
        "ride": ["滴滴出行", "高德打车", "曹操出行"],
        "food": ["美团外卖", "饿了么"],
        "pay": ["支付宝", "微信支付"],
        "video": ["哔哩哔哩", "抖音", "快手", "优酷", "小红书"],
        "app": [
            "微信",
            "淘宝",
            "支付宝",
            "美团",
            "滴滴出行",
            "高德地图",
            "京东",
            "哔哩哔哩",
            "抖音",
            "设置",
            "时钟",
            "网易云音乐",
            "小红书",
            "携程旅行",
            "饿了么",
            "相册",
            "日历",
            "备忘录",
            "计算器",
            "天气",
        ],
        "sort": ["销量", "价格从低到高", "价格从高到低", "好评率", "最新上架"],
        "mode": ["驾车", "步行", "公交", "骑行"],
        "setting": [
            "打开蓝牙",
            "关闭蓝牙",
            "打开飞行模式",
            "开启深色模式",
            "把屏幕亮度调到最高",
            "打开省电模式",
            "关闭自动旋转",
            "把铃声调成静音",
            "打开个人热点",
            "关闭位置服务",
        ],
        "tabs": [
            "首页、消息、购物车、我的",
            "微信、通讯录、发现、我",
            "推荐、关注、同城、我的",
            "首页、分类、订单、我的",
        ],
    },
    "en": {
        "chat_app": ["WeChat", "WhatsApp", "Telegram", "Messages", "Slack"],
        "shop": ["Taobao", "JD", "Amazon", "Pinduoduo"],
        "map": ["Google Maps", "Amap", "Apple Maps", "Waze"],
        "ride": ["Uber", "Didi", "Lyft", "Grab"],
        "food": ["Meituan", "Uber Eats", "DoorDash"],
        "pay": ["Alipay", "PayPal", "WeChat Pay", "Venmo"],
        "video": ["YouTube", "Bilibili", "TikTok", "Douyin", "Netflix"],
        "app": [
            "WeChat",
            "Taobao",
            "Alipay",
            "Meituan",
            "Didi",
            "Amap",
            "JD",
            "Bilibili",
            "Douyin",
            "Settings",
            "Clock",
            "Gmail",
            "Google Maps",
            "Chrome",
            "Spotify",
            "Uber",
            "YouTube",
            "Calendar",
            "Photos",
            "Camera",
        ],
        "sort": ["best selling", "price: low to high", "price: high to low", "top rated", "newest"],
        "mode": ["driving", "walking", "transit", "cycling"],
        "setting": [
            "turn on Bluetooth",
            "turn off Bluetooth",
            "turn on airplane mode",
            "switch to dark mode",
            "set the brightness to maximum",
            "turn on battery saver",
            "turn off auto-rotate",
            "mute the ringtone",
            "turn on the hotspot",
            "turn off location services",
        ],
        "tabs": [
            "Home, Messages, Cart and Me",
            "Chats, Contacts, Discover and Me",
            "For You, Following, Nearby and Profile",
            "Home, Search, Library and Premium",
        ],
    },
}

_ZH_NUM = "零一二三四五六七八九十"


def _zh_alarm(r: random.Random) -> str:
    """A plausible alarm time in words, e.g. 明天早上七点: the hour range follows the part of the day."""
    period, lo, hi = r.choice([("早上", 5, 9), ("下午", 1, 5), ("晚上", 7, 11)])
    h = r.randint(lo, hi)
    day = r.choice(["明天", "后天", "每天", "周一", "工作日"])
    return f"{day}{period}{_ZH_NUM[h] if h <= 10 else '十' + _ZH_NUM[h - 10]}点{r.choice(['', '半'])}"


# One template per line kind: a function of (pick, rng) -> sentence. pick(name) draws a filler.
TEMPLATES = {
    "zh": [
        lambda p, r: f"打开{p('chat_app')}，给{p('contact')}发消息：{p('msg')}。",
        lambda p, r: f"在{p('chat_app')}里找到{p('contact')}，告诉对方{p('msg')}。",
        lambda p, r: f"在{p('shop')}搜索{p('item')}，按{p('sort')}排序，打开第{_ZH_NUM[r.randint(1, 5)]}个商品。",
        lambda p, r: f"帮我在{p('shop')}把{p('item')}加入购物车，先不要付款。",
        lambda p, r: f"用{p('map')}导航到{p('place')}，选择{p('mode')}路线。",
        lambda p, r: f"打开{p('ride')}，叫一辆车去{p('place')}。",
        lambda p, r: f"在{p('food')}上点一份{p('dish')}，送到{p('place')}。",
        lambda p, r: f"设一个{_zh_alarm(r)}的闹钟，备注“{p('dish')}”。",
        lambda p, r: f"打开设置，{p('setting')}。",
        lambda p, r: f"用{p('pay')}给{p('contact')}转账{r.randint(2, 99) * 10}元，备注“{p('dish')}”。",
        lambda p, r: f"打开{p('video')}，搜索“{p('topic')}”，播放第一个视频。",
        lambda p, r: f"好的，正在打开{p('app')}。",
        lambda p, r: f"已经把消息“{p('msg')}”发给{p('contact')}了。",
        lambda p, r: f"为您找到{r.randint(12, 480)}件{p('item')}，排在第一的售价{r.randint(19, 899)}元。",
        lambda p, r: f"车辆已叫到，司机{r.randint(1, 9)}分钟后到达{p('place')}附近的上车点。",
        lambda p, r: f"这一步需要支付{r.randint(8, 300)}元，请您确认后我再继续。",
        lambda p, r: f"通讯录里没有叫{p('contact')}的联系人，请再说一次名字。",
        lambda p, r: f"当前屏幕是{p('app')}的首页，底部有{p('tabs')}四个标签。",
        lambda p, r: f"屏幕上是和{p('contact')}的聊天窗口，最后一条消息是“{p('msg')}”。",
        lambda p, r: f"搜索结果页显示了{p('item')}，第一件商品价格{r.randint(19, 899)}元，已售{r.randint(1, 99)}万件。",
        lambda p, r: f"地图上标出了{p('place')}，距离当前位置{r.randint(2, 95) / 10}公里。",
        lambda p, r: f"屏幕顶部显示时间{r.randint(6, 23)}:{r.randint(0, 59):02d}，电量百分之{r.randint(10, 99)}。",
        lambda p, r: f'do(action="Launch", app="{p("app")}")',
        lambda p, r: f'do(action="Type", text="{p("item")}")',
        lambda p, r: f'finish(message="已经帮您把{p("dish")}的订单提交了。")',
    ],
    "en": [
        lambda p, r: f"Open {p('chat_app')} and send {p('contact')} a message: {p('msg')}.",
        lambda p, r: f"Find {p('contact')} in {p('chat_app')} and tell them {p('msg')}.",
        lambda p, r: (
            f"Search {p('shop')} for {p('item')}, sort by {p('sort')} and open result number {r.randint(1, 5)}."
        ),
        lambda p, r: f"Add {p('item')} to my cart on {p('shop')}, but don't check out yet.",
        lambda p, r: f"Use {p('map')} to get {p('mode')} directions to {p('place')}.",
        lambda p, r: f"Open {p('ride')} and get me a ride to {p('place')}.",
        lambda p, r: f"Order {p('dish')} on {p('food')} and have it delivered to {p('place')}.",
        lambda p, r: (
            f"Set an alarm for {r.randint(5, 11)}:{r.choice(['00', '15', '30', '45'])} {r.choice(['tomorrow', 'every weekday', 'on Sunday', 'tonight'])} and label it {p('dish')}."
        ),
        lambda p, r: f"Open Settings and {p('setting')}.",
        lambda p, r: f"Send {p('contact')} {r.randint(2, 99) * 10} yuan with {p('pay')} for {p('dish')}.",
        lambda p, r: f"Open {p('video')}, search for {p('topic')} and play the first video.",
        lambda p, r: f"Sure, opening {p('app')} now.",
        lambda p, r: f'Done: I sent "{p("msg")}" to {p("contact")}.',
        lambda p, r: (
            f"I found {r.randint(12, 480)} results for {p('item')}; the top one costs {r.randint(19, 899)} yuan."
        ),
        lambda p, r: (
            f"Your ride is confirmed; the driver will reach the pickup point near {p('place')} in {r.randint(2, 9)} minutes."
        ),
        lambda p, r: f"This step charges {r.randint(8, 300)} yuan, so please confirm before I continue.",
        lambda p, r: f"I couldn't find a contact named {p('contact')}; could you say the name again?",
        lambda p, r: f"The screen shows the {p('app')} home page with {p('tabs')} tabs at the bottom.",
        lambda p, r: f'The chat with {p("contact")} is open, and the last message says "{p("msg")}".',
        lambda p, r: (
            f"The results page lists {p('item')}; the first one is {r.randint(19, 899)} yuan with {r.randint(1, 99)}k sold."
        ),
        lambda p, r: f"The map marks {p('place')}, {r.randint(2, 95) / 10} km from the current location.",
        lambda p, r: (
            f"The status bar shows {r.randint(1, 12)}:{r.randint(0, 59):02d} and {r.randint(10, 99)}% battery."
        ),
        lambda p, r: f'do(action="Launch", app="{p("app")}")',
        lambda p, r: f'do(action="Type", text="{p("topic")}")',
        lambda p, r: f'finish(message="Your order of {p("dish")} has been placed.")',
    ],
}


def forbidden_lines(out: Path) -> set[str]:
    """Lines the generated text must not repeat: the tokenizer corpus and the prompts."""
    lines = set()
    for f in sorted(CORPUS.glob("*.txt")):
        lines.update(l.strip() for l in f.read_text(encoding="utf-8").splitlines())
    prompts = out / "prompts.jsonl"
    for l in prompts.read_text(encoding="utf-8").splitlines():
        if l.strip():
            lines.add(json.loads(l)["text"].strip())
    return lines


def text_lines(lang: str, split: str, n: int, seen: set[str]) -> list[str]:
    """n unique lines for (lang, split), cycling through the template kinds; adds them to seen."""
    rng = random.Random(f"{SEED}-{lang}-{split}")
    parity = 0 if split == "calib" else 1
    fillers = {k: v[parity::2] for k, v in SPLIT_FILLERS[lang].items()} | SHARED[lang]
    pick = lambda name: rng.choice(fillers[name])  # noqa: E731
    templates = TEMPLATES[lang]
    out: list[str] = []
    for attempt in range(100 * n):
        line = templates[attempt % len(templates)](pick, rng)
        if line not in seen:
            seen.add(line)
            out.append(line)
            if len(out) == n:
                return out
    raise RuntimeError(f"templates for {lang}/{split} gave only {len(out)} unique lines")


def make_text(out: Path) -> None:
    seen = forbidden_lines(out)
    (out / "text").mkdir(parents=True, exist_ok=True)
    for lang in ("zh", "en"):
        for split in ("calib", "heldout"):
            lines = text_lines(lang, split, LINES_PER_FILE, seen)
            (out / "text" / f"{split}_{lang}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


# ====================================================================================== screenshots

FONT_CANDIDATES = ["/usr/share/fonts/truetype/wqy/wqy-microhei.ttc", "/usr/share/fonts/wqy-microhei/wqy-microhei.ttc"]


def find_cjk_font() -> str:
    for f in FONT_CANDIDATES:
        if Path(f).exists():
            return f
    sys.exit("no CJK font: install Debian's fonts-wqy-microhei (apt-get install -y fonts-wqy-microhei)")


class Screen:
    """A phone screen being drawn top to bottom; y is the layout cursor in pixels."""

    def __init__(self, name: str, size: tuple[int, int], bg: str = "#ffffff", dark: bool = False):
        self.name, (self.w, self.h) = name, size
        self.img = Image.new("RGB", size, bg)
        self.d = ImageDraw.Draw(self.img)
        self.rng = random.Random(f"{SEED}-{name}")
        self.fg = "#f2f2f2" if dark else "#111111"
        self.sub = "#9a9a9a" if dark else "#888888"
        self.y = 0

    def font(self, size: int) -> ImageFont.FreeTypeFont:
        return _font(size)

    def text(self, xy, s: str, size: int = 15, fill: str | None = None, anchor: str = "la") -> None:
        self.d.text(xy, s, font=self.font(size), fill=fill or self.fg, anchor=anchor)

    def status_bar(self, bg: str | None = None, fg: str | None = None, clock: str = "9:41", battery: int = 82) -> None:
        fg = fg or self.fg
        if bg:
            self.d.rectangle([0, 0, self.w, 26], fill=bg)
        self.text((16, 13), clock, 13, fg, "lm")
        x = self.w - 14
        # battery: outline, nub, charge level
        self.d.rounded_rectangle([x - 24, 7, x - 2, 18], 3, outline=fg, width=1)
        self.d.rectangle([x - 1, 10, x, 15], fill=fg)
        self.d.rectangle([x - 22, 9, x - 22 + int(18 * battery / 100), 16], fill=fg)
        self.text((x - 28, 13), f"{battery}%", 11, fg, "rm")
        # wifi: three arcs; signal: four bars
        cx = x - 66
        for r in (3, 6, 9):
            self.d.arc([cx - r, 18 - r, cx + r, 18 + r], 225, 315, fill=fg, width=2)
        for i in range(4):
            bx = cx - 32 + i * 5
            self.d.rectangle([bx, 18 - 3 * (i + 1), bx + 3, 18], fill=fg)
        self.y = 26

    def title_bar(
        self,
        title: str,
        bg: str | None = None,
        fg: str | None = None,
        back: bool = True,
        right: str | None = None,
        h: int = 48,
    ) -> None:
        fg = fg or self.fg
        if bg:
            self.d.rectangle([0, self.y, self.w, self.y + h], fill=bg)
        mid = self.y + h // 2
        if back:
            self.d.line([(22, mid - 8), (14, mid), (22, mid + 8)], fill=fg, width=2)
        self.text((self.w // 2, mid), title, 17, fg, "mm")
        if right == "plus":
            self.d.ellipse([self.w - 38, mid - 11, self.w - 16, mid + 11], outline=fg, width=2)
            self.d.line([(self.w - 27, mid - 6), (self.w - 27, mid + 6)], fill=fg, width=2)
            self.d.line([(self.w - 33, mid), (self.w - 21, mid)], fill=fg, width=2)
        elif right == "dots":
            for k in range(3):
                self.d.ellipse([self.w - 36 + 7 * k, mid - 2, self.w - 32 + 7 * k, mid + 2], fill=fg)
        elif right:
            self.text((self.w - 16, mid), right, 14, fg, "rm")
        self.y += h

    def search_box(
        self,
        placeholder: str,
        fill: str = "#f1f1f1",
        h: int = 36,
        margin: int = 12,
        button: str | None = None,
        button_color: str = "#ff5000",
    ) -> None:
        right = self.w - margin - (64 if button else 0)
        box = [margin, self.y + 6, right, self.y + 6 + h]
        self.d.rounded_rectangle(box, h // 2, fill=fill, outline=button_color if button else None)
        mid = self.y + 6 + h // 2
        self.d.ellipse([margin + 12, mid - 7, margin + 24, mid + 5], outline=self.sub, width=2)
        self.d.line([(margin + 22, mid + 3), (margin + 27, mid + 8)], fill=self.sub, width=2)
        self.text((margin + 34, mid), placeholder, 14, self.sub if not button else self.fg, "lm")
        if button:
            self.d.rounded_rectangle(
                [right + 6, self.y + 6, self.w - margin, self.y + 6 + h], h // 2, fill=button_color
            )
            self.text(((right + 6 + self.w - margin) // 2, mid), button, 14, "#ffffff", "mm")
        self.y += h + 12

    def avatar(self, x: int, y: int, size: int, label: str, color: str | None = None, round_: bool = False) -> None:
        color = color or self.rng.choice(["#5b8def", "#f2994a", "#27ae60", "#eb5757", "#9b51e0", "#2d9cdb", "#f2c94c"])
        box = [x, y, x + size, y + size]
        if round_:
            self.d.ellipse(box, fill=color)
        else:
            self.d.rounded_rectangle(box, size // 5, fill=color)
        self.text((x + size // 2, y + size // 2), label[:1], size // 2, "#ffffff", "mm")

    def list_row(
        self,
        title: str,
        subtitle: str = "",
        right: str = "",
        badge: int = 0,
        avatar: str | None = None,
        h: int = 64,
        toggle: bool | None = None,
        chevron: bool = False,
        round_avatar: bool = False,
    ) -> None:
        x = 14
        if avatar is not None:
            self.avatar(x, self.y + (h - 44) // 2, 44, avatar, round_=round_avatar)
            if badge:
                bx = x + 44
                self.d.ellipse([bx - 10, self.y + 4, bx + 6, self.y + 20], fill="#fa5151")
                self.text((bx - 2, self.y + 12), str(badge), 10, "#ffffff", "mm")
            x += 58
        if subtitle:
            self.text((x, self.y + h // 2 - 10), title, 16, anchor="lm")
            self.text((x, self.y + h // 2 + 12), subtitle, 13, self.sub, "lm")
        else:
            self.text((x, self.y + h // 2), title, 16, anchor="lm")
        if right:
            self.text((self.w - 14, self.y + (16 if subtitle else h // 2)), right, 12, self.sub, "rm")
        if toggle is not None:
            self.toggle(self.w - 60, self.y + h // 2 - 13, toggle)
        if chevron:
            cy = self.y + h // 2
            self.d.line([(self.w - 22, cy - 6), (self.w - 16, cy), (self.w - 22, cy + 6)], fill=self.sub, width=2)
        self.d.line(
            [(x, self.y + h - 1), (self.w, self.y + h - 1)], fill="#e6e6e6" if self.fg == "#111111" else "#333333"
        )
        self.y += h

    def toggle(self, x: int, y: int, on: bool, color: str = "#34c759") -> None:
        self.d.rounded_rectangle([x, y, x + 46, y + 26], 13, fill=color if on else "#d0d0d0")
        kx = x + 22 if on else x + 2
        self.d.ellipse([kx, y + 2, kx + 22, y + 24], fill="#ffffff")

    def bubble(self, s: str, mine: bool, color_mine: str = "#95ec69", color_other: str = "#ffffff") -> None:
        f, maxw = self.font(15), int(self.w * 0.58)
        lines = wrap(s, f, maxw)
        tw = max(int(f.getlength(l)) for l in lines)
        bh = 20 * len(lines) + 16
        ax = self.w - 54 if mine else 10
        self.avatar(ax, self.y, 40, "我" if mine else "张", "#5b8def" if mine else "#f2994a")
        bx0 = ax - 10 - tw - 24 if mine else ax + 50
        self.d.rounded_rectangle([bx0, self.y, bx0 + tw + 24, self.y + bh], 6, fill=color_mine if mine else color_other)
        tip = bx0 + tw + 24 if mine else bx0
        dx = 6 if mine else -6
        self.d.polygon(
            [(tip, self.y + 14), (tip + dx, self.y + 20), (tip, self.y + 26)], fill=color_mine if mine else color_other
        )
        for i, l in enumerate(lines):
            self.text((bx0 + 12, self.y + 8 + 20 * i), l, 15, "#111111")
        self.y += bh + 16

    def button(self, label: str, fill: str, fg: str = "#ffffff", h: int = 46, margin: int = 16) -> None:
        self.d.rounded_rectangle([margin, self.y, self.w - margin, self.y + h], h // 2, fill=fill)
        self.text((self.w // 2, self.y + h // 2), label, 16, fg, "mm")
        self.y += h + 10

    def tab_bar(self, labels: list[str], active: int, color: str, bg: str = "#f7f7f7", h: int = 56) -> None:
        top = self.h - h
        self.d.rectangle([0, top, self.w, self.h], fill=bg)
        self.d.line([(0, top), (self.w, top)], fill="#dddddd")
        cw = self.w / len(labels)
        for i, label in enumerate(labels):
            cx, c = int(cw * i + cw / 2), color if i == active else self.sub
            shape = i % 4
            if shape == 0:
                self.d.polygon(
                    [
                        (cx - 10, top + 20),
                        (cx, top + 10),
                        (cx + 10, top + 20),
                        (cx + 10, top + 30),
                        (cx - 10, top + 30),
                    ],
                    outline=c,
                    width=2,
                )
            elif shape == 1:
                self.d.rounded_rectangle([cx - 10, top + 10, cx + 10, top + 28], 5, outline=c, width=2)
            elif shape == 2:
                self.d.ellipse([cx - 10, top + 9, cx + 10, top + 29], outline=c, width=2)
            else:
                self.d.ellipse([cx - 5, top + 9, cx + 5, top + 19], outline=c, width=2)
                self.d.arc([cx - 10, top + 20, cx + 10, top + 40], 180, 360, fill=c, width=2)
            self.text((cx, top + 42), label, 11, c, "mm")

    def save(self, out: Path) -> Path:
        path = out / "screenshots" / f"{self.name}.png"
        self.img.save(path, optimize=True)
        return path


_FONT_PATH: str | None = None
_FONTS: dict[int, ImageFont.FreeTypeFont] = {}


def _font(size: int) -> ImageFont.FreeTypeFont:
    if size not in _FONTS:
        _FONTS[size] = ImageFont.truetype(_FONT_PATH, size)
    return _FONTS[size]


def wrap(s: str, font: ImageFont.FreeTypeFont, maxw: int) -> list[str]:
    """Greedy wrap: by word for Latin text, by character for CJK (no spaces to break at)."""
    tokens = s.split(" ") if s.isascii() else list(s)
    sep = " " if s.isascii() else ""
    lines, cur = [], ""
    for t in tokens:
        cand = f"{cur}{sep}{t}" if cur else t
        if font.getlength(cand) <= maxw or not cur:
            cur = cand
        else:
            lines.append(cur)
            cur = t
    return lines + [cur]


def draw_map(s: Screen, top: int, bottom: int, water: bool = True) -> list[tuple[int, int]]:
    """Streets, blocks, a river and a park in [top, bottom); returns some street crossings for pins."""
    d, rng, w = s.d, s.rng, s.w
    d.rectangle([0, top, w, bottom], fill="#f3efe6")
    xs = sorted(rng.sample(range(20, w - 20, 10), 5))
    ys = sorted(rng.sample(range(top + 20, bottom - 20, 10), 7))
    park = (xs[1] + 6, ys[2] + 6, xs[2] - 6, ys[3] - 6)
    d.rectangle(park, fill="#cfe8c4")
    if water:
        pts = [(0, ys[4] + 25)] + [(x, ys[4] + 25 + int(18 * math.sin(x / 40))) for x in range(0, w + 10, 10)]
        d.line(pts, fill="#a9d3f5", width=18)
    for x in xs:
        d.line([(x, top), (x + rng.randint(-20, 20), bottom)], fill="#ffffff", width=rng.choice([6, 8, 12]))
    for y in ys:
        d.line([(0, y), (w, y + rng.randint(-15, 15))], fill="#ffffff", width=rng.choice([6, 8]))
    d.line([(0, ys[1]), (w, ys[5])], fill="#ffd36e", width=10)  # an expressway
    return [(x, y) for x in xs for y in ys]


def map_pin(s: Screen, x: int, y: int, color: str) -> None:
    s.d.ellipse([x - 10, y - 26, x + 10, y - 6], fill=color)
    s.d.polygon([(x - 8, y - 12), (x + 8, y - 12), (x, y)], fill=color)
    s.d.ellipse([x - 4, y - 20, x + 4, y - 12], fill="#ffffff")


def route(s: Screen, a: tuple[int, int], b: tuple[int, int], color: str) -> None:
    s.d.line([a, (a[0], b[1]), b], fill=color, width=6, joint="curve")


# ------------------------------------------------------------------------------------------- screens


def scr_wechat_chats() -> Screen:
    s = Screen("wechat-chats-zh", (360, 780), "#ededed")
    s.status_bar()
    s.title_bar("微信(3)", back=False, right="plus")
    s.search_box("搜索", fill="#ffffff")
    rows = [
        ("李四", "晚上一起吃饭吗？", "10:42", 2),
        ("家庭群", "妈妈：[图片]", "10:15", 5),
        ("张三", "明天上午十点开会", "09:58", 0),
        ("Tom", "See you at the gate", "昨天", 1),
        ("文件传输助手", "[文件] 季度报告.pdf", "昨天", 0),
        ("陈经理", "合同明天签", "星期二", 0),
        ("Anna Li", "Thanks, got it!", "星期一", 0),
        ("订阅号消息", "高德地图：周末出行提醒", "星期一", 0),
        ("林老师", "作业已批改", "9/21", 0),
        ("公司通知群", "王五：收到", "9/20", 0),
    ]
    s.d.rectangle([0, s.y, s.w, s.h], fill="#ffffff")
    for name, msg, t, badge in rows:
        if s.y > s.h - 120:
            break
        s.list_row(name, msg, t, badge=badge, avatar=name, h=68)
    s.tab_bar(["微信", "通讯录", "发现", "我"], 0, "#07c160")
    return s


def scr_wechat_conversation() -> Screen:
    s = Screen("zh-wechat-send", (390, 844), "#ededed")
    s.status_bar()
    s.title_bar("张三", right="dots")
    s.d.line([(0, s.y), (s.w, s.y)], fill="#d6d6d6")
    s.y += 14
    s.text((s.w // 2, s.y + 8), "上午 9:30", 12, s.sub, "mm")
    s.y += 28
    for text, mine in [
        ("早，今天的会几点开？", True),
        ("还没定，等王总确认。", False),
        ("好的，有消息告诉我", True),
        ("OK. 资料我先发你邮箱了，记得看一下 Q3 的数据。", False),
        ("收到，谢谢", True),
    ]:
        s.bubble(text, mine)
    s.text((s.w // 2, s.y + 8), "10:05", 12, s.sub, "mm")
    s.y += 28
    s.bubble("明天上午十点开会，地点在三楼会议室。", False)
    # input bar: voice button, text field, emoji, plus
    top = s.h - 60
    s.d.rectangle([0, top, s.w, s.h], fill="#f7f7f7")
    s.d.ellipse([10, top + 14, 38, top + 42], outline="#333333", width=2)
    s.d.rounded_rectangle([46, top + 10, s.w - 84, top + 46], 6, fill="#ffffff")
    s.text((56, top + 28), "明天上午十点开会", 15, anchor="lm")
    s.d.ellipse([s.w - 76, top + 14, s.w - 48, top + 42], outline="#333333", width=2)
    s.d.rounded_rectangle([s.w - 42, top + 14, s.w - 8, top + 42], 5, fill="#07c160")
    s.text((s.w - 25, top + 28), "发送", 12, "#ffffff", "mm")
    return s


def scr_taobao_search() -> Screen:
    s = Screen("en-taobao-search", (390, 844), "#f4f4f4")
    s.status_bar(bg="#ffffff")
    s.d.rectangle([0, s.y, s.w, s.y + 50], fill="#ffffff")
    s.search_box("防水手机壳 waterproof case", fill="#ffffff", button="搜索")
    s.d.rectangle([0, s.y - 4, s.w, s.y + 34], fill="#ffffff")
    for i, tab in enumerate(["综合", "销量", "价格", "筛选"]):
        s.text((int(s.w / 4 * (i + 0.5)), s.y + 14), tab, 14, "#ff5000" if i == 0 else s.fg, "mm")
    s.y += 42
    items = [
        ("防水手机壳 全包防摔", "¥39.9", "月销 2万+"),
        ("Waterproof Pouch IPX8", "¥25.0", "1.2k sold"),
        ("潜水手机袋 可触屏", "¥19.8", "月销 8000+"),
        ("Clear Case MagSafe", "¥45.0", "3k sold"),
        ("游泳防水套 挂脖款", "¥12.9", "月销 5万+"),
        ("Rugged Shockproof Case", "¥49.0", "860 sold"),
    ]
    cw, gap = (s.w - 30) // 2, 10
    for i, (title, price, sold) in enumerate(items):
        x, y = 10 + (i % 2) * (cw + gap), s.y + (i // 2) * 250
        if y + 240 > s.h:
            break
        s.d.rounded_rectangle([x, y, x + cw, y + 240], 8, fill="#ffffff")
        hue = s.rng.choice(["#bcd4f6", "#f6d1bc", "#c9ecd5", "#e4d0f5", "#f3e7b1"])
        s.d.rounded_rectangle([x, y, x + cw, y + 160], 8, fill=hue)
        s.d.rounded_rectangle([x + cw // 2 - 28, y + 30, x + cw // 2 + 28, y + 130], 12, outline="#555555", width=3)
        s.d.ellipse([x + cw // 2 + 8, y + 40, x + cw // 2 + 20, y + 52], fill="#555555")
        s.text((x + 8, y + 178), title, 13, anchor="lm")
        s.text((x + 8, y + 208), price, 16, "#ff5000", "lm")
        s.text((x + cw - 8, y + 208), sold, 11, s.sub, "rm")
    return s


def scr_amap() -> Screen:
    s = Screen("zh-map-route", (360, 780))
    crossings = draw_map(s, 0, 600)
    s.status_bar(fg="#111111")
    s.y = 30
    s.search_box("地铁站", fill="#ffffff")
    visible = [c for c in crossings if 110 < c[1] < 520]  # clear of the search box and the bottom sheet
    me, dest = visible[1], visible[-2]
    route(s, me, dest, "#1aa260")
    s.d.ellipse([me[0] - 9, me[1] - 9, me[0] + 9, me[1] + 9], fill="#2d7ff9", outline="#ffffff", width=3)
    map_pin(s, dest[0], dest[1], "#e8453c")
    s.d.rounded_rectangle([dest[0] - 46, dest[1] - 56, dest[0] + 46, dest[1] - 32], 6, fill="#ffffff")
    s.text((dest[0], dest[1] - 44), "国贸地铁站", 12, anchor="mm")
    # bottom sheet with the route summary and a start button
    s.y = 560
    s.d.rounded_rectangle([0, s.y, s.w, s.h + 20], 18, fill="#ffffff")
    s.d.rounded_rectangle([s.w // 2 - 20, s.y + 8, s.w // 2 + 20, s.y + 12], 2, fill="#dddddd")
    s.y += 24
    s.text((16, s.y + 10), "国贸地铁站 (1号线/10号线)", 17, anchor="lm")
    s.text((16, s.y + 36), "步行 650米 · 约9分钟 · 途经光华路", 13, s.sub, "lm")
    s.y += 58
    for i, m in enumerate(["驾车", "公交", "步行", "骑行"]):
        x = 16 + i * 84
        s.d.rounded_rectangle([x, s.y, x + 74, s.y + 30], 15, fill="#e8f3ff" if i == 2 else "#f4f4f4")
        s.text((x + 37, s.y + 15), m, 13, "#1677ff" if i == 2 else s.fg, "mm")
    s.y += 44
    s.button("开始导航", "#1677ff")
    return s


def scr_gmail() -> Screen:
    s = Screen("en-reply-email", (412, 915))
    s.status_bar()
    s.y += 6
    s.d.rounded_rectangle([12, s.y, s.w - 12, s.y + 48], 24, fill="#eaf1fb")
    for k in range(3):
        s.d.line([(28, s.y + 17 + 7 * k), (44, s.y + 17 + 7 * k)], fill="#444444", width=2)
    s.text((60, s.y + 24), "Search in mail", 16, s.sub, "lm")
    s.avatar(s.w - 52, s.y + 8, 32, "M", "#7b61ff", round_=True)
    s.y += 62
    s.text((16, s.y + 8), "Primary", 13, s.sub, "lm")
    s.y += 20
    mails = [
        ("Li Wei", "Quarterly report", "Could you send the report by tonight? Thanks", "10:24 AM", True),
        ("Anna Schmidt", "Slides for Monday", "Here is the draft deck, comments welcome", "9:02 AM", True),
        ("Didi Receipts", "您的行程发票", "行程 ¥46.50 · 首都机场 → 国贸", "8:47 AM", False),
        ("GitHub", "[autoglm-export] CI passed", "All checks have passed on main", "Yesterday", False),
        ("Mom", "Weekend dinner", "Are you coming home on Saturday?", "Yesterday", False),
        ("Airline", "Your boarding pass", "Flight MU5101 · Gate 32 · Seat 14C", "Sep 21", False),
        ("Spotify", "Your Discover Weekly", "30 new songs picked for you", "Sep 20", False),
        ("Priya", "Re: lunch", "Sounds good, see you at noon", "Sep 19", False),
    ]
    for who, subj, snippet, t, unread in mails:
        if s.y > s.h - 150:
            break
        s.avatar(14, s.y + 14, 40, who, round_=True)
        s.text((66, s.y + 18), who, 15, "#111111" if unread else "#555555", "lm")
        s.text((66, s.y + 39), subj, 14, "#111111" if unread else "#555555", "lm")
        s.text((66, s.y + 58), snippet, 13, s.sub, "lm")
        s.text((s.w - 14, s.y + 18), t, 12, "#111111" if unread else s.sub, "rm")
        s.y += 76
    # compose button, then the bottom bar
    s.d.rounded_rectangle([s.w - 150, s.h - 140, s.w - 16, s.h - 84], 16, fill="#c2e7ff")
    s.text((s.w - 83, s.h - 112), "Compose", 15, "#001d35", "mm")
    s.tab_bar(["Mail", "Meet"], 0, "#0b57d0", bg="#f3f6fc")
    return s


def scr_settings_zh() -> Screen:
    s = Screen("settings-zh", (360, 780), "#f2f2f7")
    s.status_bar()
    s.title_bar("设置", back=False)
    s.search_box("搜索设置项", fill="#e4e4ea")
    s.d.rounded_rectangle([12, s.y, s.w - 12, s.y + 96], 12, fill="#ffffff")
    s.avatar(24, s.y + 18, 60, "王", "#5b8def", round_=True)
    s.text((98, s.y + 38), "王小明", 18, anchor="lm")
    s.text((98, s.y + 64), "华为帐号、云空间、更多", 13, s.sub, "lm")
    s.y += 110
    groups = [
        [("飞行模式", False), ("WLAN", "Office-5G"), ("蓝牙", True), ("移动网络", None)],
        [("显示和亮度", None), ("深色模式", False), ("声音和振动", None), ("通知和状态栏", None)],
        [("电池", "82%"), ("存储", "64 GB 可用"), ("隐私", None)],
    ]
    for group in groups:
        if s.y > s.h - 80:
            break
        top = s.y
        s.d.rounded_rectangle([12, top, s.w - 12, top + 52 * len(group)], 12, fill="#ffffff")
        for label, state in group:
            if s.y > s.h - 60:
                break
            cy = s.y + 26
            s.avatar(24, cy - 14, 28, label, round_=False)
            s.text((64, cy), label, 15, anchor="lm")
            if isinstance(state, bool):
                s.toggle(s.w - 72, cy - 13, state)
            else:
                if state:
                    s.text((s.w - 44, cy), state, 13, s.sub, "rm")
                s.d.line([(s.w - 34, cy - 6), (s.w - 28, cy), (s.w - 34, cy + 6)], fill=s.sub, width=2)
            s.y += 52
        s.y += 14
    return s


def scr_wifi_en() -> Screen:
    s = Screen("wifi-en", (390, 844), "#f2f2f7")
    s.status_bar()
    s.title_bar("Wi-Fi", right="Edit")
    s.d.rounded_rectangle([14, s.y, s.w - 14, s.y + 104], 12, fill="#ffffff")
    s.text((30, s.y + 26), "Wi-Fi", 16, anchor="lm")
    s.toggle(s.w - 76, s.y + 13, True)
    s.d.line([(30, s.y + 52), (s.w - 14, s.y + 52)], fill="#e6e6e6")
    s.text((30, s.y + 78), "✓  Home-2.4G", 16, "#007aff", "lm")
    s.y += 122
    s.text((30, s.y), "NETWORKS", 12, s.sub, "lm")
    s.y += 14
    nets = [
        "Office-5G",
        "Office-Guest",
        "Starbucks WiFi",
        "ChinaNet-7F2A",
        "DIRECT-HP Printer",
        "TP-LINK_3B1C",
        "CMCC-Free",
    ]
    s.d.rounded_rectangle([14, s.y, s.w - 14, s.y + 48 * len(nets)], 12, fill="#ffffff")
    for i, n in enumerate(nets):
        cy = s.y + 24
        s.text((30, cy), n, 16, anchor="lm")
        if i in (0, 1, 3, 5):  # lock icon for secured networks
            s.d.rectangle([s.w - 96, cy - 2, s.w - 86, cy + 6], fill=s.fg)
            s.d.arc([s.w - 95, cy - 8, s.w - 87, cy + 2], 180, 360, fill=s.fg, width=2)
        for r in (4, 8, 12):
            s.d.arc([s.w - 70 - r, cy + 6 - r, s.w - 70 + r, cy + 6 + r], 225, 315, fill=s.fg, width=2)
        s.d.ellipse([s.w - 46, cy - 10, s.w - 26, cy + 10], outline="#007aff", width=2)
        s.text((s.w - 36, cy), "i", 12, "#007aff", "mm")
        if i < len(nets) - 1:
            s.d.line([(30, s.y + 47), (s.w - 14, s.y + 47)], fill="#e6e6e6")
        s.y += 48
    s.y += 20
    s.d.rounded_rectangle([14, s.y, s.w - 14, s.y + 100], 12, fill="#ffffff")
    s.text((30, s.y + 25), "Ask to Join Networks", 16, anchor="lm")
    s.text((s.w - 30, s.y + 25), "Notify", 15, s.sub, "rm")
    s.text((30, s.y + 75), "Wi-Fi Calling", 16, anchor="lm")
    s.toggle(s.w - 76, s.y + 62, False)
    return s


def scr_music_en() -> Screen:
    s = Screen("music-player-en", (390, 844), "#121212", dark=True)
    # a background gradient: the album's colour fading into the player's black
    px = s.img.load()
    for y in range(0, 420):
        a = 1 - y / 420
        c = (int(18 + a * 80), int(18 + a * 40), int(18 + a * 110))
        for x in range(s.w):
            px[x, y] = c
    s.status_bar(fg="#ffffff")
    s.title_bar("Discover Weekly", fg="#ffffff", right="dots")
    art = [40, s.y + 20, s.w - 40, s.y + 20 + s.w - 80]
    s.d.rectangle(art, fill="#3d2c8d")
    for _k in range(9):  # album art: seeded overlapping circles
        r = s.rng.randint(20, 90)
        cx, cy = s.rng.randint(art[0], art[2]), s.rng.randint(art[1], art[3])
        s.d.ellipse(
            [max(cx - r, art[0]), max(cy - r, art[1]), min(cx + r, art[2]), min(cy + r, art[3])],
            fill=s.rng.choice(["#ff6b6b", "#feca57", "#48dbfb", "#1dd1a1", "#5f27cd", "#ff9ff3"]),
        )
    s.text((art[0] + 16, art[3] - 24), "Weekly", 26, "#ffffff", "lm")
    s.y = art[3] + 30
    s.text((40, s.y), "Midnight City Lights", 20, "#ffffff", "lm")
    s.text((40, s.y + 28), "Luna Park · 城市夜色", 14, "#b3b3b3", "lm")
    s.d.ellipse([s.w - 66, s.y - 12, s.w - 40, s.y + 14], outline="#1db954", width=2)
    s.text((s.w - 53, s.y + 1), "+", 16, "#1db954", "mm")
    s.y += 64
    s.d.rounded_rectangle([40, s.y, s.w - 40, s.y + 4], 2, fill="#535353")
    pos = 40 + int((s.w - 80) * 0.37)
    s.d.rounded_rectangle([40, s.y, pos, s.y + 4], 2, fill="#ffffff")
    s.d.ellipse([pos - 6, s.y - 4, pos + 6, s.y + 8], fill="#ffffff")
    s.text((40, s.y + 20), "1:21", 11, "#b3b3b3", "lm")
    s.text((s.w - 40, s.y + 20), "3:38", 11, "#b3b3b3", "rm")
    s.y += 70
    cx, cy = s.w // 2, s.y
    s.d.ellipse([cx - 32, cy - 32, cx + 32, cy + 32], fill="#ffffff")
    s.d.rectangle([cx - 10, cy - 12, cx - 4, cy + 12], fill="#121212")  # pause
    s.d.rectangle([cx + 4, cy - 12, cx + 10, cy + 12], fill="#121212")
    for sgn in (-1, 1):  # previous / next
        x = cx + sgn * 90
        s.d.polygon([(x - sgn * 10, cy - 12), (x + sgn * 8, cy), (x - sgn * 10, cy + 12)], fill="#ffffff")
        s.d.rectangle([x + sgn * 9 - 2, cy - 12, x + sgn * 9 + 2, cy + 12], fill="#ffffff")
    s.d.line([(40, cy - 8), (62, cy + 8)], fill="#1db954", width=2)  # shuffle
    s.d.line([(40, cy + 8), (62, cy - 8)], fill="#1db954", width=2)
    s.d.arc([s.w - 66, cy - 10, s.w - 42, cy + 10], 0, 360, fill="#b3b3b3", width=2)  # repeat
    s.y += 70
    s.d.rounded_rectangle([16, s.y, s.w - 16, s.y + 120], 12, fill="#2a2a2a")
    s.text((32, s.y + 24), "Lyrics", 16, "#ffffff", "lm")
    s.text((32, s.y + 56), "Under the neon, we keep on running", 14, "#ffffff", "lm")
    s.text((32, s.y + 82), "霓虹灯下 我们一直奔跑", 14, "#b3b3b3", "lm")
    return s


def scr_clock_en() -> Screen:
    s = Screen("clock-alarms-en", (360, 780), "#000000", dark=True)
    s.status_bar(fg="#ffffff")
    s.title_bar("Alarm", fg="#ffffff", back=False, right="plus")
    alarms = [
        ("6:30", "AM", "gym · Tomorrow", True),
        ("7:00", "AM", "Every day", True),
        ("7:15", "AM", "Weekdays", True),
        ("8:00", "AM", "Sat, Sun", False),
        ("12:30", "PM", "lunch reminder", False),
        ("10:45", "PM", "sleep", True),
    ]
    for t, ampm, label, on in alarms:
        s.d.rounded_rectangle([12, s.y, s.w - 12, s.y + 84], 16, fill="#1c1c1e")
        col = "#ffffff" if on else "#8e8e93"
        s.text((28, s.y + 34), t, 34, col, "lm")
        tw = int(s.font(34).getlength(t))
        s.text((32 + tw, s.y + 42), ampm, 14, col, "lm")
        s.text((28, s.y + 66), label, 13, "#8e8e93", "lm")
        s.toggle(s.w - 76, s.y + 29, on, color="#ff9f0a")
        s.y += 94
    s.tab_bar(["World", "Alarm", "Stopwatch", "Timer"], 1, "#ff9f0a", bg="#111111")
    return s


def scr_meituan() -> Screen:
    s = Screen("meituan-food-zh", (360, 780), "#f5f5f5")
    s.status_bar(bg="#ffd100")
    s.d.rectangle([0, s.y, s.w, s.y + 96], fill="#ffd100")
    s.text((14, s.y + 18), "▼ 望京SOHO T3", 15, anchor="lm")
    s.y += 34
    s.search_box("黄焖鸡米饭", fill="#ffffff", button="搜索", button_color="#ff8a00")
    s.y += 6
    cats = ["美食", "甜点饮品", "超市便利", "水果", "买药"]
    for i, c in enumerate(cats):
        cx = int(s.w / 5 * (i + 0.5))
        s.avatar(cx - 20, s.y, 40, c, round_=True)
        s.text((cx, s.y + 54), c, 12, anchor="mm")
    s.y += 74
    shops = [
        ("杨铭宇黄焖鸡米饭", "4.8", "月售 3126", "30分钟 · 1.2km", "起送 ¥20 · 免配送费"),
        ("瑞幸咖啡 (望京店)", "4.7", "月售 9999+", "25分钟 · 800m", "满29减10"),
        ("老北京炸酱面馆", "4.6", "月售 1520", "38分钟 · 2.1km", "起送 ¥15"),
        ("Wagas 沙拉轻食", "4.5", "月售 860", "35分钟 · 1.8km", "新客立减8元"),
        ("海底捞外送", "4.9", "月售 2400", "45分钟 · 3.0km", "配送 ¥6"),
        ("蜜雪冰城", "4.8", "月售 9999+", "20分钟 · 500m", "满20减3"),
    ]
    for name, score, sold, eta, promo in shops:
        if s.y > s.h - 110:
            break
        s.d.rounded_rectangle([10, s.y, s.w - 10, s.y + 100], 10, fill="#ffffff")
        s.avatar(20, s.y + 12, 76, name)
        s.text((108, s.y + 22), name, 16, anchor="lm")
        s.text((108, s.y + 46), f"★ {score}  {sold}", 12, "#ff6a00", "lm")
        s.text((s.w - 22, s.y + 46), eta, 12, s.sub, "rm")
        s.d.rounded_rectangle(
            [108, s.y + 64, 108 + int(s.font(11).getlength(promo)) + 12, s.y + 84], 4, outline="#ff4b33"
        )
        s.text((114, s.y + 74), promo, 11, "#ff4b33", "lm")
        s.y += 110
    s.tab_bar(["首页", "订单", "会员", "我的"], 0, "#ff8a00")
    return s


def _ride(name: str, lang: str) -> Screen:
    zh = lang == "zh"
    s = Screen(name, (360, 780) if zh else (390, 844))
    crossings = draw_map(s, 0, s.h - 330, water=not zh)
    s.status_bar()
    a, b = crossings[s.rng.randrange(6, 12)], crossings[s.rng.randrange(22, 30)]
    route(s, a, b, "#1f9d55" if zh else "#111111")
    map_pin(s, a[0], a[1], "#19b955" if zh else "#276ef1")
    map_pin(s, b[0], b[1], "#fc5a26" if zh else "#111111")
    s.d.rounded_rectangle([a[0] - 40, a[1] - 58, a[0] + 40, a[1] - 34], 12, fill="#ffffff", outline="#dddddd")
    s.text((a[0], a[1] - 46), "在这里上车" if zh else "Pickup", 12, anchor="mm")
    s.y = s.h - 340
    s.d.rounded_rectangle([0, s.y, s.w, s.h + 20], 18, fill="#ffffff")
    s.y += 16
    s.text(
        (20, s.y + 8), "● 望京SOHO T3 东门" if zh else "● 221 Riverside Ave", 14, "#19b955" if zh else "#276ef1", "lm"
    )
    s.text(
        (20, s.y + 36),
        "● 北京首都国际机场 T3" if zh else "● Airport, Terminal 2",
        14,
        "#fc5a26" if zh else "#111111",
        "lm",
    )
    s.y += 60
    options = (
        [("快车", "预估 ¥96", "3分钟"), ("特惠快车", "预估 ¥82", "6分钟"), ("专车", "预估 ¥168", "4分钟")]
        if zh
        else [
            ("UberX", "$38.20", "3 min away"),
            ("Comfort", "$46.75", "5 min away"),
            ("UberXL", "$61.10", "7 min away"),
        ]
    )
    for i, (kind, price, eta) in enumerate(options):
        sel = i == 0
        s.d.rounded_rectangle(
            [12, s.y, s.w - 12, s.y + 54],
            10,
            fill="#f2fbf5" if sel and zh else "#f3f3f3" if sel else "#ffffff",
            outline="#19b955" if sel and zh else "#111111" if sel else "#eeeeee",
            width=2 if sel else 1,
        )
        s.d.rounded_rectangle([24, s.y + 15, 60, s.y + 39], 6, fill="#cccccc")
        s.text((72, s.y + 18), kind, 15, anchor="lm")
        s.text((72, s.y + 38), eta, 12, s.sub, "lm")
        s.text((s.w - 26, s.y + 27), price, 15, anchor="rm")
        s.y += 60
    s.y += 6
    s.button("呼叫快车" if zh else "Choose UberX", "#19b955" if zh else "#000000")
    return s


def scr_home_en() -> Screen:
    s = Screen("home-screen-en", (412, 915), "#2b3a67")
    for y in range(s.h):  # wallpaper: vertical gradient
        t = y / s.h
        s.d.line([(0, y), (s.w, y)], fill=(int(43 + 120 * t), int(58 + 40 * t), int(103 + 60 * t)))
    s.status_bar(fg="#ffffff")
    s.text((s.w // 2, 90), "9:41", 64, "#ffffff", "mm")
    s.text((s.w // 2, 140), "Tuesday, September 23 · 24°C", 15, "#ffffff", "mm")
    apps = [
        ("WeChat", "#07c160"),
        ("Taobao", "#ff5000"),
        ("Alipay", "#1677ff"),
        ("Meituan", "#ffd100"),
        ("Didi", "#ff7a00"),
        ("Amap", "#2f8cff"),
        ("JD", "#e1251b"),
        ("Bilibili", "#fb7299"),
        ("Douyin", "#111111"),
        ("Gmail", "#ea4335"),
        ("Maps", "#34a853"),
        ("Chrome", "#fbbc05"),
        ("Spotify", "#1db954"),
        ("Uber", "#000000"),
        ("Settings", "#8e8e93"),
        ("Clock", "#333333"),
    ]
    cell, top = s.w // 4, 200
    for i, (name, color) in enumerate(apps):
        cx, cy = cell * (i % 4) + cell // 2, top + (i // 4) * 104
        s.d.rounded_rectangle([cx - 30, cy, cx + 30, cy + 60], 16, fill=color)
        s.text((cx, cy + 30), name[0], 28, "#ffffff", "mm")
        s.text((cx, cy + 76), name, 12, "#ffffff", "mm")
    s.d.rounded_rectangle([24, s.h - 210, s.w - 24, s.h - 166], 22, fill="#ffffff")
    s.text((48, s.h - 188), "Search apps, web · 搜索", 15, "#666666", "lm")
    s.d.rounded_rectangle([16, s.h - 140, s.w - 16, s.h - 40], 28, outline="#ffffff", width=2)
    for i, (name, color) in enumerate(
        [("Phone", "#34c759"), ("Messages", "#34c759"), ("Chrome", "#fbbc05"), ("Camera", "#555555")]
    ):
        cx = cell * i + cell // 2
        s.d.rounded_rectangle([cx - 30, s.h - 120, cx + 30, s.h - 60], 16, fill=color)
        s.text((cx, s.h - 90), name[0], 28, "#ffffff", "mm")
    return s


def scr_chrome_en() -> Screen:
    s = Screen("chrome-search-en", (412, 915))
    s.status_bar()
    s.y += 4
    s.d.rounded_rectangle([12, s.y, s.w - 60, s.y + 42], 21, fill="#f1f3f4")
    s.text((40, s.y + 21), "weather shanghai this weekend", 15, anchor="lm")
    s.d.rounded_rectangle([s.w - 48, s.y + 9, s.w - 24, s.y + 33], 4, outline=s.fg, width=2)
    s.text((s.w - 36, s.y + 21), "3", 12, anchor="mm")
    s.y += 56
    for i, tab in enumerate(["All", "News", "Images", "Maps", "Videos"]):
        x = 16 + i * 78
        s.text((x, s.y + 12), tab, 14, "#1a73e8" if i == 0 else "#5f6368", "lm")
    s.d.line([(16, s.y + 28), (40, s.y + 28)], fill="#1a73e8", width=3)
    s.y += 44
    s.d.rounded_rectangle([12, s.y, s.w - 12, s.y + 210], 14, outline="#dadce0")
    s.text((28, s.y + 24), "Shanghai · Saturday", 14, "#5f6368", "lm")
    s.d.ellipse([28, s.y + 46, 88, s.y + 106], fill="#fbbc05")
    s.text((104, s.y + 76), "26°C", 40, anchor="lm")
    s.text((s.w - 28, s.y + 62), "Rain: 20%", 13, "#5f6368", "rm")
    s.text((s.w - 28, s.y + 84), "Wind: 11 km/h", 13, "#5f6368", "rm")
    for i, (day, hi, lo) in enumerate(
        [("Sat", 26, 19), ("Sun", 24, 18), ("Mon", 22, 17), ("Tue", 23, 18), ("Wed", 25, 19)]
    ):
        x = 28 + i * 74
        s.text((x + 20, s.y + 136), day, 13, anchor="mm")
        s.d.ellipse([x + 10, s.y + 150, x + 30, s.y + 170], fill="#fbbc05" if i % 2 == 0 else "#9aa0a6")
        s.text((x + 20, s.y + 188), f"{hi}° {lo}°", 12, "#5f6368", "mm")
    s.y += 226
    results = [
        ("weather.com.cn", "上海天气预报 - 中国天气网", "上海未来7天天气预报，周六多云转晴，气温19到26度。"),
        (
            "accuweather.com",
            "Shanghai Weekend Weather Forecast",
            "Partly cloudy on Saturday; a few showers possible Sunday.",
        ),
        ("timeanddate.com", "14 Day Extended Forecast for Shanghai", "Highs in the mid 20s, comfortable humidity."),
    ]
    for site, title, snippet in results:
        if s.y > s.h - 120:
            break
        s.text((16, s.y + 10), site, 12, "#202124", "lm")
        s.text((16, s.y + 34), title, 17, "#1a0dab", "lm")
        for j, l in enumerate(wrap(snippet, s.font(13), s.w - 32)[:2]):
            s.text((16, s.y + 58 + 18 * j), l, 13, "#4d5156", "lm")
        s.y += 108
    return s


SCREENS = [
    scr_wechat_chats,
    scr_wechat_conversation,
    scr_taobao_search,
    scr_amap,
    scr_gmail,
    scr_settings_zh,
    scr_wifi_en,
    scr_music_en,
    scr_clock_en,
    scr_meituan,
    lambda: _ride("didi-ride-zh", "zh"),
    lambda: _ride("uber-ride-en", "en"),
    scr_home_en,
    scr_chrome_en,
]


def make_screenshots(out: Path) -> None:
    global _FONT_PATH
    _FONT_PATH = find_cjk_font()
    d = out / "screenshots"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    for make in SCREENS:
        path = make().save(out)
        print(f"  {path.relative_to(out)}  {path.stat().st_size // 1024} KB")


# =========================================================================================== speech

VOICES = {"zh": "cmn", "en": "en-us"}
MIN_S, MAX_S = 1.5, 4.0


def espeak(text: str, voice: str, wpm: int) -> tuple[np.ndarray, int]:
    """Synthesize with espeak-ng into a temporary WAV; returns (float samples, rate)."""
    from autoglm_runtime.preprocess import load_wav

    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "out.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(wav), text], check=True)
        return load_wav(wav)


def trim(x: np.ndarray, rate: int, margin_s: float = 0.08) -> np.ndarray:
    """Drop leading/trailing near-silence, keeping a short margin (espeak pads both ends)."""
    loud = np.flatnonzero(np.abs(x) > 0.01 * np.abs(x).max())
    m = int(margin_s * rate)
    return x[max(loud[0] - m, 0) : loud[-1] + m]


def speech_clip(text: str, lang: str) -> tuple[np.ndarray, int]:
    """(16 kHz clip of text within MIN_S..MAX_S, espeak-ng words per minute): the rate is stepped until it fits."""
    from autoglm_runtime.preprocess import resample

    # cmn speaks slowly at espeak's default 175 wpm, so the ladder climbs high; 17 syllables in ~4 s is natural Mandarin.
    for wpm in (160, 180, 200, 225, 250, 275, 300, 325, 350, 140, 120):
        x, rate = espeak(text, VOICES[lang], wpm)
        x = resample(trim(x, rate), rate, RATE)
        if MIN_S <= x.size / RATE <= MAX_S:
            return (0.8 * x / np.abs(x).max()).astype(np.float32), wpm  # peak at -2 dBFS
    raise RuntimeError(f"cannot fit {text!r} into {MIN_S}-{MAX_S} s")


def write_wav(path: Path, x: np.ndarray) -> None:
    pcm = np.clip(np.round(x * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.tobytes())


def make_speech(out: Path) -> None:
    if shutil.which("espeak-ng") is None:
        sys.exit("espeak-ng not found: apt-get install -y espeak-ng")
    version = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout.strip()
    print(f"  {version}")
    d = out / "speech"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    for line in (out / "prompts.jsonl").read_text(encoding="utf-8").splitlines():
        p = json.loads(line) if line.strip() else {}
        if p.get("audio"):
            rel = p.get("speech", f"speech/{p['id']}.wav")
            x, wpm = speech_clip(p["text"], p["lang"])
            write_wav(out / rel, x)
            print(f"  {rel}  {x.size / RATE:.2f} s  ({VOICES[p['lang']]}, {wpm} wpm)")


# ========================================================================================= manifest


def data_files(root: Path) -> list[Path]:
    return sorted({f for g in DATA_GLOBS for f in root.glob(g)})


def manifest_text(root: Path) -> str:
    """sha256sum format, so `cd calibration_data && sha256sum -c MANIFEST.sha256` also checks it."""
    rows = [f"{hashlib.sha256(f.read_bytes()).hexdigest()}  {f.relative_to(root).as_posix()}" for f in data_files(root)]
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=PARTS, action="append", help="regenerate only these parts (repeatable)")
    ap.add_argument("--out", type=Path, default=OUT, help="calibration_data directory (must hold prompts.jsonl)")
    args = ap.parse_args(argv)
    parts = args.only or list(PARTS)
    makers = {"text": make_text, "screenshots": make_screenshots, "speech": make_speech}
    for part in PARTS[:-1]:
        if part in parts:
            print(part)
            makers[part](args.out)
    (args.out / "MANIFEST.sha256").write_text(
        manifest_text(args.out), encoding="utf-8"
    )  # always: it hashes what is there
    total = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"manifest: {len(data_files(args.out))} files, calibration_data/ is {total / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
