"""Writes the ELF image inside an XZ-compressed Linux bzImage: extract-vmlinux.py BZIMAGE OUT."""
import lzma
import sys

image = open(sys.argv[1], "rb").read()
start = image.find(b"\xfd7zXZ\x00")
if start < 0:
    sys.exit(f"{sys.argv[1]}: no XZ-compressed payload")
elf = lzma.LZMADecompressor().decompress(image[start:])
if elf[:4] != b"\x7fELF":
    sys.exit(f"{sys.argv[1]}: the payload is not an ELF image")
with open(sys.argv[2], "wb") as out:
    out.write(elf)
