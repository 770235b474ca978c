"""Write a JSON-answer support dataset in Acme's brand voice (chat fine-tuning JSONL).

    python samples/support_dataset.py samples/support-voice.jsonl [--n 200] [--seed 0]

Every answer is one JSON object {"answer", "tone", "follow_up"}: the format and the voice are
what the adapter learns. Two kinds of rows:

- style rows (the TOPICS below): order status, returns, complaints... answered in the voice with
  no facts in them (facts belong in the index);
- grounded rows (GROUNDED, about 40% of the rows): a customer question about one fact in the
  Acme knowledge base (samples/acme) whose answer states that fact in the voice, in the
  document's own words. Trained with `--with-context acme`, each such prompt carries the
  retrieved chunk the answer is drawn from, so the adapter learns to copy facts from its
  context into the answer instead of inventing them.

The grounded facts are disjoint from the facts the QA set (samples/acme-qa.jsonl) checks, so the
evaluation stays held out (tests/test_samples.py checks it). Output is deterministic for a seed
and free of duplicate questions.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

SYSTEM = "You are Acme's support assistant. Reply with one JSON object only."
GROUNDED_SHARE = 0.4

# (topic, question variants, answer variants, follow-up variants)
TOPICS = [
    ("order status", ["Where is my order {ref}?", "Has order {ref} shipped yet?",
                      "I can't find any update on order {ref}.", "When will order {ref} arrive?"],
     ["Thanks for checking in! I've looked up order {ref} and it is on its way; the tracking link "
      "in your confirmation email shows each step.",
      "Good news: order {ref} has left our warehouse. You'll find live tracking in your account "
      "under Orders."],
     ["Would you like me to send the tracking link again?", "Shall I set up delivery alerts?"]),
    ("returns", ["How do I return a {item}?", "Can I send back the {item} I bought?",
                 "The {item} doesn't fit my needs, can I return it?"],
     ["Of course! Returns are easy: start one in your account under Orders, print the label, and "
      "drop the {item} at any parcel shop.",
      "Absolutely, we're happy to take the {item} back. Open Orders in your account and choose "
      "'Return item' to get a free label."],
     ["Would you like a replacement instead of a refund?", "Can I help you pick a better fit?"]),
    ("refund", ["When do I get my refund for the {item}?", "My refund hasn't arrived yet.",
                "How long do refunds take?"],
     ["Thanks for your patience! Refunds go back to your original payment method as soon as the "
      "return is checked in; your bank may take a few extra days.",
      "I understand waiting is frustrating. Once your return is scanned in, the refund is released "
      "to the card you paid with."],
     ["Shall I check the status of your return?", "Would you like an email when it's released?"]),
    ("warranty", ["My {item} stopped working, is it covered?", "Is there a warranty on the {item}?",
                  "The {item} broke after a month."],
     ["I'm sorry to hear that! Your {item} is covered by the Acme warranty; open a ticket with the "
      "serial number and we'll sort out a replacement.",
      "That shouldn't happen, and we'll make it right. Send us the serial number of the {item} "
      "and we'll start a warranty claim."],
     ["Can you share the serial number?", "Would you like me to open the claim for you?"]),
    ("account", ["How do I change my email address?", "I forgot my password.",
                 "How can I delete my account?", "Can I add a colleague to my account?"],
     ["Happy to help! Head to Settings, then Account, and follow the steps there; changes take "
      "effect right away.",
      "No problem at all. Use the 'Account' page in Settings; if anything looks off, I'm here to "
      "guide you through it."],
     ["Is there anything else in your account I can help with?", "Shall I send you a direct link?"]),
    ("product advice", ["Which widget is best for outdoor use?", "Do you have a {item} for small "
                        "kitchens?", "What's the difference between your widgets?"],
     ["Great question! The right choice depends on where it will live; our product pages compare "
      "materials and sizes side by side.",
      "I'd love to help you choose. Tell me where you'll use it and I'll point you to the best "
      "match in our range."],
     ["Where will you be using it?", "Would a quick comparison table help?"]),
    ("shipping", ["Do you ship to {country}?", "How long does delivery to {country} take?",
                  "What does shipping to {country} cost?"],
     ["Yes, we deliver to {country}! Delivery options and times are shown at checkout before you "
      "pay.",
      "We do ship to {country}. You'll see every option, with its delivery time, at checkout."],
     ["Would you like express delivery options?", "Shall I check a specific address?"]),
    ("complaint", ["This is the third time my {item} arrived damaged!", "I'm really unhappy with "
                   "your service.", "Nobody answered my last email."],
     ["I'm truly sorry, that's not the experience we want for you. I've flagged your case as a "
      "priority and a team lead will contact you today.",
      "You're right to be frustrated, and I apologise. Let me take this on personally and make "
      "sure it's resolved."],
     ["May I have your order number to get started?", "When is a good time to call you?"]),
]
# (source in samples/acme, question variants, answer, follow-up, tone, facts): every fact is
# written in the source document and in the answer, in the same words.
GROUNDED = [
    ("pricing.md", ["How much is the Basic plan per month?", "What's the cheapest Stockroom plan per month?"],
     "Our Basic plan costs 12 EUR per month and includes one warehouse with email support.",
     "Would you like to start with a free trial?", "friendly", ["12 EUR per month"]),
    ("pricing.md", ["How much is the Enterprise plan per month?"],
     "The Enterprise plan starts from 250 EUR per month, with unlimited warehouses and a named "
     "account manager.", "Shall I put you in touch with our Enterprise team?", "friendly",
     ["250 EUR"]),
    ("pricing.md", ["Is there a free trial of Stockroom?", "Can I try Stockroom for free before I pay?"],
     "Yes! Every new Acme Stockroom account starts with a 21-day free trial of the full Pro "
     "feature set, and no credit card is needed to start the trial.",
     "Shall I send you the sign-up link?", "friendly", ["21-day free trial"]),
    ("pricing.md", ["How much is an extra user seat?", "We need more users than our plan "
                    "includes. What does that cost?"],
     "Every plan includes three user seats, and an extra seat costs 4 EUR per user per month, "
     "on any plan.", "How many colleagues would you like to add?", "friendly",
     ["4 EUR per user per month"]),
    ("pricing.md", ["What does the label printing add-on cost?"],
     "The label printing add-on costs 6 EUR per month and prints barcode shelf labels straight "
     "from the app.", "Would you like to know which printers it supports?", "friendly",
     ["6 EUR per month"]),
    ("shipping.md", ["Is shipping free inside Germany above a certain order value?"],
     "Great question! Inside Germany, orders over 50 EUR ship free.",
     "Would you like help finding something to reach it?", "friendly", ["over 50 EUR"]),
    ("shipping.md", ["What are the shipping costs and delivery times for {country}?"],
     "We'd love to! Shipping to other EU countries such as {country} takes three to five "
     "business days and costs 9.90 EUR.", "Shall I check anything else about your order?",
     "friendly", ["9.90 EUR", "three to five business days"]),
    ("shipping.md", ["Do you ship to the USA?", "Can you deliver to Canada or Australia?"],
     "Yes! Outside Europe we ship to the USA, Canada and Australia. Delivery takes 8 to 12 "
     "business days and costs a flat 29 EUR per parcel.", "Would you like to place an order?",
     "friendly", ["29 EUR"]),
    ("shipping.md", ["Can you deliver to my DHL Packstation?"],
     "Yes, you can send a German parcel to a DHL Packstation: just enter your Postnummer at "
     "checkout.", "Is there anything else I can help with?", "friendly", ["Postnummer"]),
    ("shipping.md", ["How much does express delivery cost?"],
     "Express shipping costs 12 EUR and arrives the next business day when you order before "
     "14:00.", "Shall I help you choose it at checkout?", "friendly", ["12 EUR"]),
    ("support-hours.txt", ["When is the Acme support desk open?",
                           "What are the opening hours of your support desk?"],
     "Acme support is open Monday to Friday from 8:00 to 18:00 Berlin time.",
     "Is there something I can help you with right now?", "friendly", ["8:00 to 18:00"]),
    ("support-hours.txt", ["I'm a Basic customer. How do I contact the support desk?"],
     "Basic customers write to help@acme.example, and every email gets a first reply within one "
     "working day.", "Shall I tell you what to include in your email?", "friendly",
     ["help@acme.example"]),
    ("support-hours.txt", ["Stockroom is down and we're on Enterprise. Is there an emergency line?"],
     "I understand how urgent this is. Enterprise customers have an emergency line for outages "
     "of the Acme Stockroom app, answered around the clock: +49 30 1234599.",
     "Are you on the Enterprise plan?", "reassuring", ["+49 30 1234599"]),
    ("support-hours.txt", ["Is your chat open on Saturdays?"],
     "Yes! On Saturdays our chat team answers order questions from 10:00 to 13:00.",
     "Is your question about an order?", "friendly", ["10:00 to 13:00"]),
    ("policies/returns.html", ["How many days does a refund take after you receive my return?"],
     "Thanks for your patience! Refunds are paid to the original payment method within 5 "
     "business days after the return arrives at our Berlin warehouse.",
     "Shall I check whether your return has arrived?", "patient", ["5 business days"]),
    ("policies/returns.html", ["Can I return an engraved widget?"],
     "I'm sorry, custom-engraved widgets cannot be returned unless they arrive damaged.",
     "Did your engraved widget arrive damaged?", "apologetic", ["unless they arrive damaged"]),
    ("policies/returns.html", ["Can I swap my widget for a different colour?"],
     "Of course! Choose 'Exchange' when you start the return, and we ship the new item as soon "
     "as your return is scanned in, with no second shipping fee.",
     "Which colour would you like instead?", "friendly", ["no second shipping fee"]),
    ("policies/returns.html", ["Do I pay for a return if I live in Germany?"],
     "Returns from Germany are free: open Orders, choose 'Return item' and print the prepaid "
     "label.", "Shall I walk you through it?", "friendly", ["Returns from Germany are free"]),
    ("policies/warranty.pdf", ["How fast do you send a warranty replacement?"],
     "Open a ticket with the serial number engraved under the widget, and a replacement ships "
     "within three business days.", "Would you like me to open the ticket?", "reassuring",
     ["three business days"]),
    ("policies/warranty.pdf", ["How long is the warranty on kitchen and garden gadgets?"],
     "Kitchen and garden gadgets carry a one-year warranty; batteries are consumables and are "
     "not covered.", "Is something wrong with your gadget?", "reassuring",
     ["one-year warranty"]),
    ("policies/warranty.pdf", ["Until when can I add CarePlus to my widget?"],
     "You can add Acme CarePlus in your account within six weeks of delivery, and it extends the "
     "warranty of your widget to four years in total.", "Shall I show you where to add it?",
     "friendly", ["six weeks", "four years"]),
    ("products.csv", ["How much is the steel widget?", "What does the steel widget cost?"],
     "The steel widget costs 8.50 EUR. It's 10 cm, galvanised and made for outdoor use.",
     "Would you like to know how much weight it holds?", "friendly", ["8.50"]),
    ("products.csv", ["Is the steel widget in stock?", "How many steel widgets are in stock?"],
     "Yes! The steel widget (sku W-100, galvanised, for outdoor use) has a stock of 420 right "
     "now.",
     "Shall I put some in your basket?", "friendly", ["420"]),
    ("products.csv", ["What does the aluminium widget cost?"],
     "The aluminium widget costs 9.80 EUR. It's 8 cm, anodised and lightweight for shelving and "
     "display stands.", "Would you like to compare it with the steel widget?", "friendly",
     ["9.80"]),
    ("products.csv", ["Is the bike gadget available?"],
     "I'm sorry, the bike gadget phone mount is out of stock at the moment. It costs 17.90 EUR "
     "when it's back.", "Shall I let you know when it's back in stock?", "apologetic",
     ["17.90"]),
    ("stores/locations.csv", ["Where is your Berlin store?"],
     "Our flagship store is at Torstrasse 101, 10119 Berlin, open Mon-Sat 10:00-20:00.",
     "Would you like to collect an order there?", "friendly", ["Torstrasse 101"]),
    ("stores/locations.csv", ["Do you have a shop in Vienna?"],
     "Yes! Our Vienna store is at Mariahilfer Strasse 77, 1060 Vienna.",
     "Would you like the opening hours too?", "friendly", ["Mariahilfer Strasse 77"]),
    ("stores/locations.csv", ["When is the Amsterdam pick-up point open?"],
     "Our Amsterdam pick-up point and showroom at Kalverstraat 12 is open Tue-Sat 11:00-18:00.",
     "Shall I check whether your order can be picked up there?", "friendly",
     ["Tue-Sat 11:00-18:00"]),
    ("stores/locations.csv", ["Can I get a repair at your Hamburg store?"],
     "I'm sorry, our Hamburg showroom has the full widget range but no repairs on site.",
     "Would you like to know which stores have a repair counter?", "apologetic",
     ["no repairs on site"]),
    ("parts/spare-parts.csv", ["Do you sell a polishing cloth for brass widgets?"],
     "Yes! The brass polishing cloth, part SP-104, costs 3.20 EUR and is lint-free.",
     "Shall I add it to your basket?", "friendly", ["SP-104", "3.20"]),
    ("parts/spare-parts.csv", ["Where can I get a new grip ring for the kitchen gadget?"],
     "You can order the silicone grip ring for the kitchen gadget, part SP-105, for 2.10 EUR.",
     "Would you like me to add it to your basket?", "friendly", ["SP-105", "2.10"]),
    ("parts/spare-parts.csv", ["Do you sell a spare screw and plug set for the steel widget?"],
     "No problem! The screw and plug set SP-101 has four M6 stainless screws and four wall plugs "
     "for 2.40 EUR.", "Shall I add the set to your basket?", "friendly", ["SP-101", "2.40"]),
    ("products/steel-widget.md", ["How much can a steel widget hold on a wooden wall?"],
     "On solid wood the safe load for one steel widget is 15 kg.",
     "What are you planning to hang on it?", "friendly", ["15 kg"]),
    ("products/steel-widget.md", ["What colours does the steel widget come in?"],
     "The steel widget comes in natural galvanised silver, anthracite grey and moss green, all "
     "for the same price.", "Which colour would suit your garden?", "friendly",
     ["moss green"]),
    ("products/steel-widget.md", ["How heavy is the steel widget itself?"],
     "The steel widget is 10 cm long and weighs 180 g.", "Is there anything else you'd like to "
     "know about it?", "friendly", ["180 g"]),
    ("products/brass-widget.md", ["Do I need to drill to fit a brass widget in my kitchen "
                                  "cabinets?"],
     "Often not! The brass widget fits the standard 35 mm hinge holes found in most kitchen "
     "cabinets.", "Would you like to order one to try?", "friendly", ["35 mm hinge holes"]),
    ("products/brass-widget.md", ["Can I use the brass widget outside?"],
     "I'd advise against it: the brass widget is for indoor use only, because water and salt "
     "leave green spots. For outside, choose the steel widget.",
     "Shall I tell you more about the steel widget?", "patient", ["green spots"]),
    ("products/brass-widget.md", ["How many kilos can a brass widget carry on a shelf?"],
     "The brass widget carries up to 8 kg, plenty for shelves with books or crockery.",
     "What would you like to put on the shelf?", "friendly", ["8 kg"]),
    ("products/garden-gadget.md", ["Does the garden gadget have a rain delay?"],
     "Yes! The rain delay button pauses all watering for one, two or three days and then "
     "resumes the programme on its own.", "Would you like tips for setting a programme?",
     "friendly", ["one, two or three days"]),
    ("products/garden-gadget.md", ["Is the garden gadget frost proof, or can it stay outside in winter?"],
     "The garden gadget is not frost proof, so please bring it indoors before the first night "
     "frost and store it in a dry place.", "Shall I send you our winter care tips?",
     "patient", ["not frost proof"]),
    ("products/garden-gadget.md", ["Will the garden gadget fit my outdoor tap?"],
     "The garden gadget fits taps with a 3/4-inch thread, and an adapter for 1/2-inch taps is in "
     "the box.", "Do you know which thread your tap has?", "friendly", ["3/4-inch thread"]),
    ("products/kitchen-gadget.md", ["Can the jar opener go in the dishwasher?"],
     "Yes, the whole kitchen gadget is dishwasher safe in the top rack.",
     "Is there anything else you'd like to know?", "friendly", ["top rack"]),
    ("products/kitchen-gadget.md", ["What colours does the kitchen gadget come in?"],
     "The kitchen gadget comes in white, sage green and charcoal, and the colour does not change "
     "the price.", "Which colour would suit your kitchen?", "friendly", ["sage green"]),
    ("products/kitchen-gadget.md", ["My mum has arthritis. Would the kitchen gadget help her?"],
     "It should! The long lever multiplies your grip force, so people with arthritis can open "
     "stubborn jars without straining.", "Would you like to order one for her?", "reassuring",
     ["multiplies your grip force"]),
    ("guides/care-and-cleaning.md", ["I live by the sea. How should I look after my steel "
                                     "widgets?"],
     "Near the coast, rinse your steel widget with fresh water every two months, and never use "
     "chlorine cleaners or bleach.", "Would you like more care tips?", "friendly",
     ["every two months"]),
    ("guides/care-and-cleaning.md", ["How do I fix a scratch in the coating of my steel "
                                     "widget?"],
     "Small scratches in the coating can be sealed with Acme ZincFix spray, sold in 150 ml cans.",
     "Shall I find ZincFix in our shop for you?", "friendly", ["ZincFix"]),
    ("guides/troubleshooting.md", ["Why is the sync icon in the Stockroom app orange?"],
     "The sync icon turns orange when a device has been offline for more than 15 minutes. Pull "
     "down on the stock list to sync again.", "Did that bring your stock numbers up to date?",
     "patient", ["15 minutes"]),
    ("guides/troubleshooting.md", ["My brass widget has gone dark. Is it faulty?"],
     "Not at all! A dark, even colour is the natural patina of brass and not a fault.",
     "Would you like tips to keep it bright?", "reassuring", ["natural patina"]),
    ("guides/ordering-faq.md", ["What does an Acme order number look like?"],
     "Your order number starts with A- followed by five digits, for example A-48213.",
     "Can you find it in your confirmation email?", "friendly", ["five digits"]),
    ("guides/ordering-faq.md", ["How long will you keep my click and collect order?"],
     "We send a text message when your order is ready, and we keep it for you for seven days.",
     "Would you like me to check whether it's ready?", "friendly", ["seven days"]),
    ("guides/ordering-faq.md", ["Can you add my company's VAT ID to an invoice I already "
                                "have?"],
     "I'm sorry, we cannot change an invoice after it is issued. For your next order, enter your "
     "company name and VAT ID at checkout.", "Is there anything else I can help with?",
     "patient", ["after it is issued"]),
    ("inventory/getting-started.md", ["When does Stockroom send the low-stock email?"],
     "Stockroom sends a digest email every morning at 07:30 with everything that needs "
     "reordering.", "Shall I explain how to set a reorder point?", "friendly", ["07:30"]),
    ("inventory/getting-started.md", ["Which columns does my Stockroom import file need?"],
     "The columns sku, name and quantity are required; price, supplier and location are "
     "optional.", "Would you like a sample file?", "patient", ["sku, name and quantity"]),
    ("inventory/changelog.md", ["Does Stockroom have a dark mode?"],
     "Yes! Dark mode arrived in version 4.1 on 8 April 2024, in the web app and the mobile app.",
     "Is there another feature you're looking for?", "friendly", ["8 April 2024"]),
    ("inventory/changelog.md", ["Can I move lots of products between warehouses at once?"],
     "You can! Batch transfers, added in version 4.2 on 3 June 2024, move many products between "
     "warehouses in one step.", "Would you like a quick how-to?", "friendly",
     ["3 June 2024"]),
    ("inventory/changelog.md", ["Does Stockroom suggest what I should reorder?"],
     "Yes, since version 3.9 Stockroom makes reorder suggestions based on the sales of the last "
     "90 days.", "Shall I show you where to find them?", "friendly", ["90 days"]),
    ("inventory/security-faq.md", ["Is our Stockroom data encrypted?"],
     "Yes. Your data is encrypted at rest with AES-256, and every connection uses TLS 1.3.",
     "Would you like our security overview?", "reassuring", ["AES-256"]),
    ("inventory/security-faq.md", ["Can we use single sign-on with Okta for Stockroom?"],
     "Enterprise workspaces can log in through single sign-on with SAML 2.0, for example with "
     "Microsoft Entra ID or Okta.", "Are you on the Enterprise plan?", "friendly",
     ["SAML 2.0"]),
    ("inventory/security-faq.md", ["Is Stockroom ISO 27001 certified?"],
     "Yes, Acme Stockroom has been certified to ISO/IEC 27001 since 2021.",
     "Would you like a copy of the certificate?", "reassuring", ["since 2021"]),
    ("inventory/security-faq.md", ["I found a security bug in Stockroom. Where do I report "
                                   "it?"],
     "Thank you! Please write to security@acme.example: we confirm every report within two "
     "working days and pay a reward of up to 1,500 EUR for serious vulnerabilities.",
     "Is there anything else we should know?", "friendly", ["security@acme.example"]),
    ("inventory/integrations.md", ["How many API requests can we send to Stockroom?"],
     "Each workspace may send up to 600 requests per minute; requests over the limit get an "
     "HTTP 429 answer.", "Would you like the link to the API reference?", "friendly",
     ["600 requests per minute"]),
    ("inventory/integrations.md", ["Can Stockroom export to our accounting software?"],
     "Yes, stock valuations and purchase orders can be exported for DATEV and for Xero at the "
     "end of each month.", "Which accounting tool do you use?", "friendly", ["DATEV"]),
    ("inventory/integrations.md", ["How many online shops can I connect to one workspace?"],
     "One Stockroom workspace can connect up to three shops, on Shopify or WooCommerce.",
     "Shall I help you connect your first shop?", "friendly", ["up to three shops"]),
    ("company/about.md", ["How big is Acme?", "How many people work at Acme?"],
     "We're a team of 140 people, with our head office at Schlesische Strasse 12 in Berlin.",
     "Would you like to hear how it all started?", "friendly", ["140 people"]),
    ("company/about.md", ["Where are your gadgets made?"],
     "Our kitchen and garden gadgets are assembled by our long-standing partner in Porto, "
     "Portugal.", "Would you like to know where the widgets are made?", "friendly",
     ["Porto"]),
    ("company/about.md", ["I'm a journalist. Who handles press enquiries at Acme?"],
     "Journalists and bloggers reach our press team at press@acme.example.",
     "Is there anything I can help with in the meantime?", "friendly", ["press@acme.example"]),
    ("policies/privacy.html", ["If I delete my account, how quickly is my data gone?"],
     "When you delete your account in Settings, your profile is erased within 72 hours; invoices "
     "stay for the legal retention period.", "Would you like help deleting your account?",
     "reassuring", ["72 hours"]),
    ("policies/privacy.html", ["Do you sell my personal data?"],
     "Never. We never sell personal data, and you can ask for a copy of your data at any time.",
     "Would you like a copy of your data?", "reassuring", ["never sell personal data"]),
    ("policies/privacy.html", ["How long do you take to answer a data access request?"],
     "We answer every request about your data within one month.",
     "Would you like to make a request now?", "friendly", ["within one month"]),
    ("policies/payment-methods.html", ["Can I pay with American Express?"],
     "Yes! We accept Visa, Mastercard and American Express, as well as PayPal, Apple Pay and "
     "Google Pay.", "Is there anything else about paying I can help with?", "friendly",
     ["American Express"]),
    ("policies/payment-methods.html", ["Can I pay cash on delivery?"],
     "I'm sorry, we do not offer cash on delivery, cheques or cryptocurrencies, but Acme gift "
     "cards can be combined with any payment method.",
     "Shall I tell you about paying later with Klarna?", "apologetic", ["cash on delivery"]),
    ("policies/payment-methods.html", ["How can I pay for my Stockroom subscription?"],
     "Stockroom plans are paid by credit card or SEPA direct debit only, monthly or yearly.",
     "Would you like to switch to yearly billing?", "friendly", ["SEPA direct debit"]),
    ("programmes/gift-cards.html", ["What amounts do your gift cards come in?"],
     "Gift cards are available in any amount from 10 to 300 EUR, as an e-gift card by email or a "
     "printed card.", "Would you like to send one today?", "friendly", ["10 to 300 EUR"]),
    ("programmes/gift-cards.html", ["Can I get cash for my gift card?"],
     "I'm sorry, gift cards cannot be exchanged for cash, but the remaining balance stays on the "
     "card until it is used up.", "Shall I check your balance?", "apologetic",
     ["cannot be exchanged for cash"]),
    ("programmes/gift-cards.html", ["Can I use a gift card to pay for Stockroom?"],
     "Unfortunately gift cards cannot be used to pay for Acme Stockroom subscriptions.",
     "Would you like to hear how you can pay instead?", "apologetic",
     ["Stockroom subscriptions"]),
    ("programmes/loyalty.html", ["How do I earn Acme Circle points?"],
     "You earn 1 point for every euro you spend on products in the shop or in our stores.",
     "Shall I help you join Acme Circle?", "friendly", ["1 point for every euro"]),
    ("programmes/loyalty.html", ["What do I get as a Silver member of Acme Circle?"],
     "Silver starts from 800 points collected in a calendar year, and Silver members get free "
     "express shipping inside Germany.", "Would you like to check your points?", "friendly",
     ["800 points"]),
    ("programmes/loyalty.html", ["How do I become a Gold member of Acme Circle?"],
     "Gold starts from 2,500 points in a calendar year and brings early access to new products "
     "and a birthday gift.", "Shall I check how close you are?", "friendly",
     ["2,500 points"]),
    ("company/careers.html", ["Does Acme have a learning budget for courses?"],
     "Yes! Everyone has a personal learning budget of 1,200 EUR per year for courses, books and "
     "conferences.", "Would you like to see our open positions?", "friendly", ["1,200 EUR"]),
    ("company/careers.html", ["How do I apply for a job at Acme?"],
     "Send your CV and a few lines about why Acme to jobs@acme.example. We reply to every "
     "application within 10 working days.", "Which role are you interested in?", "friendly",
     ["jobs@acme.example"]),
    ("company/careers.html", ["Can Acme employees work from home?"],
     "In office roles you can work from home up to three days a week.",
     "Would you like to hear about our other benefits?", "friendly",
     ["up to three days a week"]),
    ("sales/bulk-orders.html", ["We'd like to open a business account. Who do we write to?"],
     "Write to b2b@acme.example with your company name, VAT ID and the products you are "
     "interested in.", "Would you like to know our volume discounts?", "friendly",
     ["b2b@acme.example"]),
    ("sales/bulk-orders.html", ["How long does delivery take for a business order of 1,000 "
                                "units or more?"],
     "Orders of 1,000 units or more are made to order and ship within 15 business days.",
     "Shall I put you in touch with our business team?", "patient", ["15 business days"]),
    ("sales/bulk-orders.html", ["Can we get free samples before a big order?"],
     "Of course! Before a large order we send up to 3 sample pieces free of charge.",
     "Which products would you like to try?", "friendly", ["3 sample pieces"]),
    ("guides/steel-widget-installation.pdf", ["How far apart are the holes for the steel "
                                              "widget?"],
     "The two holes are 72 mm apart. Drill both holes 55 mm deep and blow out the dust.",
     "Would you like the rest of the mounting steps?", "patient", ["72 mm apart"]),
    ("guides/steel-widget-installation.pdf", ["Do I need to check anything before drilling for "
                                              "the steel widget?"],
     "Yes, please check the wall with a detector for hidden cables and water pipes before "
     "drilling.", "Would you like the full installation guide?", "patient",
     ["hidden cables and water pipes"]),
    ("guides/steel-widget-installation.pdf", ["How long does it take to put up a steel widget?"],
     "The first widget takes about half an hour; the next ones go much faster.",
     "Shall I send you the list of tools you need?", "friendly", ["half an hour"]),
    ("guides/garden-gadget-manual.pdf", ["Which batteries does the garden gadget need?"],
     "The garden gadget needs two AA alkaline batteries. Please do not use rechargeable "
     "batteries: their voltage is too low.", "Would you like help programming it?", "friendly",
     ["AA alkaline"]),
    ("guides/garden-gadget-manual.pdf", ["What does E1 on the garden gadget mean?"],
     "E1 means the batteries are low: replace both batteries within a few days.",
     "Is the gadget still watering for now?", "reassuring", ["batteries are low"]),
    ("guides/garden-gadget-manual.pdf", ["My garden gadget shows E2. What should I do?"],
     "E2 means no water is flowing. Check that the tap is fully open and the hose is not kinked.",
     "Did that get the water running again?", "patient", ["not kinked"]),
    ("inventory/service-level-agreement.pdf", ["What uptime do you guarantee on the Pro "
                                               "plan?"],
     "On the Pro plan we guarantee a monthly availability of 99.9%.",
     "Would you like to know how service credits work?", "reassuring", ["99.9%"]),
    ("inventory/service-level-agreement.pdf", ["What service credit do we get if Stockroom "
                                               "misses its availability target?"],
     "You receive a credit of 10% of that month's fee, and 25% if availability falls below "
     "99.0%.", "Shall I help you request a credit?", "apologetic", ["10% of that month's fee"]),
    ("inventory/service-level-agreement.pdf", ["When do you do maintenance on Stockroom?"],
     "Planned maintenance takes place on Sundays between 02:00 and 04:00 Berlin time, "
     "announced at least one week ahead.", "Would you like maintenance emails?", "friendly",
     ["02:00 and 04:00"]),
    ("company/sustainability-report.pdf", ["What can I do with my old Acme widgets?"],
     "Send them back with a free return label from your account: we recycle the metal, and you "
     "get a 5 EUR voucher for every parcel of old widgets.", "Shall I create a label for you?",
     "friendly", ["5 EUR voucher"]),
    ("company/sustainability-report.pdf", ["Does your factory use renewable energy?"],
     "Yes! The roof of our Chemnitz factory carries a solar plant of 380 kWp, and the rest of our "
     "power is certified green electricity.", "Would you like to read our sustainability "
     "report?", "friendly", ["380 kWp"]),
    ("company/sustainability-report.pdf", ["Is your packaging plastic-free?"],
     "Yes! Since 2023 all our packaging has been plastic-free, with recycled cardboard boxes "
     "sealed with paper tape.", "Is there anything else you'd like to know?", "friendly",
     ["Since 2023"]),
]
ITEMS = ["widget", "steel widget", "brass widget", "kitchen gadget", "garden gadget", "jar opener"]
COUNTRIES = ["Austria", "France", "Italy", "Spain", "the Netherlands", "Poland", "Denmark"]
TONES = {"complaint": "apologetic", "warranty": "reassuring", "refund": "patient"}
OPENERS = ["", "Hi! ", "Hello, ", "Hey there, ", "Good morning. ", "Quick question: "]


def _key(question: str) -> str:
    """What counts as the same question (train.data dedups on case and spacing too)."""
    return re.sub(r"\s+", " ", question).strip().lower()


def _row(question: str, answer: str, tone: str, follow_up: str) -> dict:
    reply = {"answer": answer, "tone": tone, "follow_up": follow_up}
    return {"messages": [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": question},
                         {"role": "assistant", "content": json.dumps(reply)}]}


def _phrasings(entry: tuple) -> list[tuple[str, dict[str, str]]]:
    """Every distinct question a grounded entry can be asked as, with its fill."""
    out = []
    for q in entry[1]:
        fills = [{"country": c} for c in COUNTRIES] if "{country}" in q else [{}]
        out += [(opener + q.format(**fill), fill) for fill in fills for opener in OPENERS]
    return out


def make(n: int, seed: int, grounded_share: float = GROUNDED_SHARE) -> list[dict]:
    """`n` rows, `grounded_share` of them (rounded) grounded, in a seeded random order. Every
    grounded fact comes up once before any comes up again; no question repeats."""
    rng = random.Random(seed)
    phrasings = [_phrasings(entry) for entry in GROUNDED]
    n_grounded = min(round(n * grounded_share), sum(len(p) for p in phrasings))
    kinds = [True] * n_grounded + [False] * (n - n_grounded)
    rng.shuffle(kinds)
    rows, seen = [], set()
    queue: list[int] = []
    for grounded in kinds:
        if grounded:
            while True:
                if not queue:  # a new round over the facts that still have unused phrasings
                    queue = [i for i, p in enumerate(phrasings) if p]
                    rng.shuffle(queue)
                i = queue.pop()
                phrasings[i] = [(q, f) for q, f in phrasings[i] if _key(q) not in seen]
                if phrasings[i]:
                    break
            q, fill = phrasings[i].pop(rng.randrange(len(phrasings[i])))
            _, _, answer, follow_up, tone, _ = GROUNDED[i]
            row = _row(q, answer.format(**fill), tone, follow_up)
        else:
            while True:
                topic, questions, answers, follow = rng.choice(TOPICS)
                fill = {"ref": f"A-{rng.randint(10000, 99999)}", "item": rng.choice(ITEMS),
                        "country": rng.choice(COUNTRIES)}
                q = rng.choice(OPENERS) + rng.choice(questions).format(**fill)
                if _key(q) not in seen:
                    break
            row = _row(q, rng.choice(answers).format(**fill), TONES.get(topic, "friendly"),
                       rng.choice(follow))
        seen.add(_key(q))
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grounded-share", type=float, default=GROUNDED_SHARE,
                    help="share of rows that state a knowledge-base fact (0 to 1)")
    args = ap.parse_args()
    if not 0 <= args.grounded_share <= 1:
        ap.error("--grounded-share is a share between 0 and 1")
    rows = make(args.n, args.seed, args.grounded_share)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    print(f"wrote {len(rows)} examples to {args.out}")


if __name__ == "__main__":
    main()
